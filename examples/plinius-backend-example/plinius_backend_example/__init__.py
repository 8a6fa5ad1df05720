"""An example plinius storage backend shipped as its own package (see README.md)."""

from plinius_backend_example.plaindir import PlainDirBackend

__all__ = ["PlainDirBackend"]
