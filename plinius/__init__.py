"""plinius: secure, crash-resilient ML training with encrypted model mirrors."""

__version__ = "0.2.0"
