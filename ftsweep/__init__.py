"""ftsweep: fine-tune pre-trained Transformer classifiers and weigh accuracy against time and memory."""

__version__ = "0.1.0"
