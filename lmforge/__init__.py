"""lmforge: pretrain, fine-tune, evaluate and serve transformer language models."""

__version__ = "0.1.0"
