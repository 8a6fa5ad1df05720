"""``dax``: the same file path on a DAX-mounted file system (the paper's "PM as a file system")."""

from __future__ import annotations

from plinius.backends.files import FileBackend


class DaxBackend(FileBackend):
    """File I/O on ext4/xfs mounted ``-o dax``; flagged ``emulated`` when the mount is not DAX."""

    name = "dax"
    summary = "file + fsync on a DAX file system (PM as a file system); emulated when not DAX"
    example_location = "/mnt/pmem0/plinius"
    fsync = True
    expects = "dax"
