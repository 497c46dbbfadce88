"""Model inversion: rebuilding what the training data of a class looks like from the model alone."""
