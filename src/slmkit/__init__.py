"""slmkit: train, diagnose, evaluate, fine-tune, quantize, export and serve small language models."""

__version__ = "0.1.0"
