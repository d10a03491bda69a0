"""bitsieve: how many bits of a model matter, and how fast it would run on a bit-serial accelerator."""

__version__ = "0.1.0"
