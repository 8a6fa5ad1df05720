"""Every error plinius raises on purpose, so callers and the CLI can tell them apart.

Messages say what was found and what to do; the CLI prints them and exits non-zero.
"""

from __future__ import annotations


class PliniusError(Exception):
    """Base class of all deliberate plinius errors."""


class ConfigError(PliniusError):
    """A malformed spec, option or configuration file."""


class SpecError(ConfigError):
    """A backend spec that cannot be parsed (expected NAME:LOCATION)."""


class UnknownBackendError(ConfigError):
    """A backend name that is not registered."""


class PluginConflictError(ConfigError):
    """A plug-in name already taken: by a built-in, another package, an earlier registration."""


class BackendError(PliniusError):
    """A backend cannot be opened or used (missing or unwritable path, I/O failure)."""


class PoolFullError(BackendError):
    """A persistent pool has no room for the requested allocation."""


class PoolLockedError(BackendError):
    """Another process holds the pool open."""


class BackendLockedError(BackendError):
    """Another process holds a file backend open (one process per backend directory)."""


class FormatError(PliniusError):
    """Stored bytes are not what plinius wrote: foreign, truncated or corrupt file."""


class PoolCorruptError(FormatError):
    """A persistent pool's own structures (header, allocator, free lists, roots) are damaged.

    A :class:`FormatError` rather than a :class:`BackendError`: the backend works, the stored
    bytes are not what plinius wrote (possibly planted by an attacker). The message names the
    pool and the field; the pool is refused, never repaired or re-created silently.
    """


class NotAMirrorError(FormatError):
    """The bytes do not start with the mirror magic."""


class TruncatedError(FormatError):
    """The stored object is shorter than its header says."""


class UnsupportedVersionError(FormatError):
    """The object was written by a newer format version than this plinius reads."""


class IntegrityError(PliniusError):
    """An AES-GCM tag check failed: tampered, swapped, replayed or foreign ciphertext."""

    def __init__(self, what: str, detail: str = "") -> None:
        self.what = what
        msg = f"integrity check failed for {what}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class WrongKeyError(IntegrityError):
    """The object was sealed under a different key (key ids differ)."""

    def __init__(self, what: str, found: str, given: str) -> None:
        self.found = found
        self.given = given
        PliniusError.__init__(
            self,
            f"{what} was sealed with key id {found}, but the key given has id {given}: "
            "use the key file the mirror was created with",
        )
        self.what = what


class StaleMirrorError(IntegrityError):
    """An older mirror was put back (rollback/replay)."""

    def __init__(self, what: str, found: int, expected: int) -> None:
        self.found = found
        self.expected = expected
        PliniusError.__init__(
            self,
            f"{what} is version {found}, but version {expected} or newer was committed: "
            "an older copy of the mirror was put back (rollback refused)",
        )
        self.what = what


class RollbackError(IntegrityError):
    """A mirror other than the one the platform recorded as committed: rollback, fork, splice."""

    def __init__(self, message: str) -> None:
        PliniusError.__init__(self, message)
        self.what = message


class ReplicaLagError(PliniusError):
    """No replica holds a copy recent enough: the primary would run further ahead of the
    replicas than ``--replica-max-lag`` allows (a deleted primary would lose more)."""


class NotFoundError(PliniusError, FileNotFoundError):
    """Something that must exist does not: a dataset file, a mirror, a stored sample area."""


class ModelMismatchError(PliniusError):
    """A mirror belongs to a different model architecture."""


class ToolMissingError(PliniusError):
    """An external tool (fio) is missing or too old."""


class MissingExtraError(ToolMissingError):
    """An optional Python dependency (an extra such as ``plot``) is not installed."""
