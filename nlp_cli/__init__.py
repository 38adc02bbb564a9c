"""nlp: prompt learning on CLIP under noisy labels."""

__version__ = "0.1.0"
