"""annoboot: visual pre-training on unlabeled images by annotation bootstrapping."""

__version__ = "0.1.0"
