"""Metric computations the stages write: the Fréchet distance in a LeNet's feature space, the confusion matrix."""
