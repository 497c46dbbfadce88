"""Privacy controls: training that bounds what a model can reveal about any one training record."""
