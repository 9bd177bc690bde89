"""Datasets: IDX file reading and writing, and the MNIST loader."""
