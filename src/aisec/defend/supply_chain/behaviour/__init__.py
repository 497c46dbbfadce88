"""Behavioural checks and repairs of a model you did not build: Neural Cleanse (is there a backdoor, and to
which class?) and fine-pruning (remove it). They run the model, so they need torch; nothing on the scanning path
imports this package."""
