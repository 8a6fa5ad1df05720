"""``tmpfs``: files in RAM without fsync; survives a process crash, not a reboot."""

from __future__ import annotations

from typing import ClassVar

from plinius.backends.base import Durability
from plinius.backends.files import FileBackend


class TmpfsBackend(FileBackend):
    """The file path without fsync: the upper bound for file-based mirrors on this machine."""

    name = "tmpfs"
    summary = "file in RAM, no fsync: process-crash durability only (lost on reboot)"
    example_location = "/dev/shm/plinius"
    fsync = False
    expects = "tmpfs"
    default_root = "shm"
    durability_levels: ClassVar[tuple[Durability, ...]] = ("process-crash",)
