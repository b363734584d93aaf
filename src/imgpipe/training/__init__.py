"""Fitting a network: the loop, its batch sources, batch-norm statistics, processes and GPUs."""
