"""``ssd``: the paper's baseline, file I/O with fsync on a block-device file system."""

from __future__ import annotations

from plinius.backends.files import FileBackend


class SsdBackend(FileBackend):
    """Write a new file, fsync it, rename it over the old one, fsync the directory."""

    name = "ssd"
    summary = "file + fsync + atomic rename on a block device (the paper's SSD baseline)"
    example_location = "/var/lib/plinius"
    fsync = True
