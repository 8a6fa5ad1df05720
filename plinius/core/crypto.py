"""AES-GCM-128 sealing straight into caller-provided memory.

A sealed buffer is ``[IV 12 B][ciphertext n B][tag 16 B]``: 28 B of metadata per buffer, as in the
paper, laid out so that ``cryptography``'s ``encrypt_into`` (which appends the tag) writes the whole
record in place with no temporary. Every buffer gets a fresh random IV and associated data that
binds it to its model, layer, name and mirror version (see :func:`associated_data`), so a buffer
moved to another place, another model or another mirror version fails to open.

Engines share one interface: ``openssl`` (native, libcrypto on all cores, built where OpenSSL's
headers are: :mod:`plinius.core.crypto_native`), ``cryptography`` (the ``fast`` extra) and
``pycryptodome`` (always installed); plug-ins add more. :func:`make_engine` without a name is
``auto``: per call size and mode, the way (engine, libcrypto, threads) measured fastest on this
machine (:mod:`plinius.core.crypto_choice`, :mod:`plinius.core.crypto_ways`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib
import os
import struct
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from plinius.core.errors import ConfigError, IntegrityError, NotFoundError, WrongKeyError
from plinius.core.fsutil import create_exclusive, opened_regular
from plinius.core.plugins import Registry
from plinius.core.units import fmt_bytes

KEY_BYTES = 16
KEY_FILE_MAX = 4096  # a key file is 48 bytes; anything far bigger is not one
IV_BYTES = 12
TAG_BYTES = 16
OVERHEAD = IV_BYTES + TAG_BYTES  # 28 B per sealed buffer
KEY_ID_BYTES = 8

Buffer = bytes | bytearray | memoryview | np.ndarray
#: where single-buffer IVs come from; tests pin it (with ``crypto_native.random_bytes``) to
#: compare the records of every way byte for byte
random_bytes = os.urandom


def associated_data(fingerprint: bytes, layer: int, name: str, version: int) -> bytes:
    """Canonical AAD: binds a buffer to (model fingerprint, layer index, buffer name, version).

    Length-prefixed so that no two different tuples encode to the same bytes.
    """
    raw_name = name.encode()
    return b"".join(
        (
            b"plinius-aad-v1",
            struct.pack("<H", len(fingerprint)),
            fingerprint,
            struct.pack("<qH", layer, len(raw_name)),
            raw_name,
            struct.pack("<Q", version),
        )
    )


def as_bytes_view(buf: Buffer | np.ndarray) -> memoryview:
    """A flat unsigned-byte view of any C-contiguous buffer (numpy arrays included), no copy."""
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("array must be C-contiguous to be sealed in place")
        return buf.reshape(-1).view(np.uint8).data
    mv = memoryview(buf)
    if mv.format == "B" and mv.ndim == 1:
        return mv
    if not mv.c_contiguous:
        raise ValueError("buffer must be C-contiguous to be sealed in place")
    return mv.cast("B")


def key_id(key: bytes) -> bytes:
    """A short public identifier of a key (HMAC-SHA256 of a constant), to name wrong keys early."""
    return hmac.new(key, b"plinius key id v1", hashlib.sha256).digest()[:KEY_ID_BYTES]


class Engine(ABC):
    """One AES-GCM-128 implementation bound to one key."""

    #: short engine name recorded in every report
    name: str

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError(f"AES-GCM-128 needs a {KEY_BYTES}-byte key, got {len(key)} bytes")
        self.key_id = key_id(bytes(key))

    def encrypt_into(self, aad: bytes, plaintext: Buffer, out: memoryview) -> None:
        """Encrypt ``plaintext`` into ``out`` (exactly ``len(plaintext) + OVERHEAD`` bytes)."""
        pv = as_bytes_view(plaintext)
        n = pv.nbytes
        if out.nbytes != n + OVERHEAD:
            raise ValueError(f"output is {out.nbytes} B, encrypting {n} B needs {n + OVERHEAD} B")
        iv = random_bytes(IV_BYTES)
        out[:IV_BYTES] = iv
        self._encrypt(iv, aad, pv, out[IV_BYTES:])

    def decrypt_into(self, aad: bytes, sealed: Buffer, out: Buffer, what: str) -> None:
        """Decrypt ``sealed`` (IV, ciphertext, tag) into ``out``; raise :class:`IntegrityError`
        naming ``what`` if it does not authenticate.

        On failure ``out`` may hold unauthenticated bytes: callers restore into scratch or discard.
        """
        sv = as_bytes_view(sealed)
        out = as_bytes_view(out)
        n = sv.nbytes - OVERHEAD
        if n < 0:
            raise IntegrityError(what, f"sealed buffer is {sv.nbytes} B, shorter than {OVERHEAD} B")
        if out.nbytes != n:
            raise ValueError(f"output is {out.nbytes} B, sealed buffer holds {n} B")
        if not self._decrypt(bytes(sv[:IV_BYTES]), aad, sv[IV_BYTES:], out):
            raise IntegrityError(what, "tag mismatch (tampered, moved, replayed or wrong key)")

    #: True when :meth:`encrypt_many`/:meth:`decrypt_many` spread their jobs over several cores
    #: (the GIL released); the Python engines hold the GIL and run them one after another
    parallel: bool = False
    #: threads a call may use
    threads: int = 1

    @property
    def way(self) -> str:
        """The way this engine runs (``cryptography/1``; ``openssl[3.5.9]/2`` for the native
        one), as :mod:`plinius.core.crypto_ways` names them."""
        return f"{self.name}/{self.threads}"

    def describe(self) -> str:
        """One line for reports: which way runs which calls (here always the same one)."""
        return self.way

    def ways_used(self) -> dict[str, Engine]:
        """The engines this one hands calls to, by way name (itself, except for ``auto``)."""
        return {self.way: self}

    def encrypt_many(self, jobs: Sequence[tuple[bytes, Buffer, memoryview]]) -> None:
        """Encrypt many ``(aad, plaintext, out)`` jobs, each as :meth:`encrypt_into` (own random
        IV). Parallel engines override this to seal them on all cores in one call."""
        for aad, plaintext, out in jobs:
            self.encrypt_into(aad, plaintext, out)

    def decrypt_many(self, jobs: Sequence[tuple[bytes, Buffer, Buffer, str]]) -> None:
        """Decrypt many ``(aad, sealed, out, what)`` jobs, each as :meth:`decrypt_into`; raise
        :class:`IntegrityError` naming the first job (in list order) that fails to open.

        On failure every ``out`` may hold unauthenticated bytes (see :meth:`decrypt_into`)."""
        for aad, sealed, out, what in jobs:
            self.decrypt_into(aad, sealed, out, what)

    @abstractmethod
    def _encrypt(
        self, iv: bytes, aad: bytes, plaintext: memoryview, ct_and_tag: memoryview
    ) -> None:
        """Write ciphertext followed by the 16-byte tag into ``ct_and_tag``."""

    @abstractmethod
    def _decrypt(self, iv: bytes, aad: bytes, ct_and_tag: memoryview, out: memoryview) -> bool:
        """Decrypt into ``out``; return False when the tag does not verify."""


class PycryptodomeEngine(Engine):
    """AES-GCM from pycryptodome, writing through ``output=`` (no temporaries)."""

    name = "pycryptodome"

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        from Crypto.Cipher import AES

        self._aes = AES
        self._key = bytes(key)

    def _encrypt(
        self, iv: bytes, aad: bytes, plaintext: memoryview, ct_and_tag: memoryview
    ) -> None:
        n = ct_and_tag.nbytes - TAG_BYTES
        cipher = self._aes.new(self._key, self._aes.MODE_GCM, nonce=iv, mac_len=TAG_BYTES)
        cipher.update(aad)
        if n:
            cipher.encrypt(plaintext, output=ct_and_tag[:n])
        ct_and_tag[n:] = cipher.digest()

    def _decrypt(self, iv: bytes, aad: bytes, ct_and_tag: memoryview, out: memoryview) -> bool:
        n = ct_and_tag.nbytes - TAG_BYTES
        cipher = self._aes.new(self._key, self._aes.MODE_GCM, nonce=iv, mac_len=TAG_BYTES)
        cipher.update(aad)
        if n:
            cipher.decrypt(ct_and_tag[:n], output=out)
        try:
            cipher.verify(bytes(ct_and_tag[n:]))
        except ValueError:
            return False
        return True


class CryptographyEngine(Engine):
    """AES-GCM from ``cryptography`` (OpenSSL) via ``encrypt_into``/``decrypt_into``."""

    name = "cryptography"
    #: the largest buffer its one-shot calls take (OpenSSL's int lengths): a larger one (a
    #: format-2 record of over 2 GiB) panics in its Rust layer, so it goes to pycryptodome,
    #: which writes the same records
    ONE_SHOT_MAX = (1 << 31) - 1

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(bytes(key))
        self._invalid_tag = InvalidTag
        self._key = bytes(key)
        self._large: PycryptodomeEngine | None = None

    def _big(self) -> PycryptodomeEngine:
        if self._large is None:
            self._large = PycryptodomeEngine(self._key)
        return self._large

    def _encrypt(
        self, iv: bytes, aad: bytes, plaintext: memoryview, ct_and_tag: memoryview
    ) -> None:
        if len(plaintext) > self.ONE_SHOT_MAX:
            self._big()._encrypt(iv, aad, plaintext, ct_and_tag)
            return
        self._aead.encrypt_into(iv, plaintext, aad, ct_and_tag)

    def _decrypt(self, iv: bytes, aad: bytes, ct_and_tag: memoryview, out: memoryview) -> bool:
        if len(out) > self.ONE_SHOT_MAX:
            return self._big()._decrypt(iv, aad, ct_and_tag, out)
        try:
            self._aead.decrypt_into(iv, ct_and_tag, aad, out)
        except self._invalid_tag:
            return False
        return True


def _cryptography_usable() -> bool:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return False
    return hasattr(AESGCM, "encrypt_into")


# Fastest first: the default is the first one installed. Engines registered through the
# entry-point group ``plinius.engines`` or :func:`register_engine` come after these.
@functools.cache
def openssl_usable() -> bool:
    """Whether the compiled module loads here and finds a libcrypto (the default one, or
    ``$PLINIUS_LIBCRYPTO``'s, checked when an engine is made); asked here, not of
    ``crypto_native``, which builds on this module (no import cycle)."""
    try:
        from plinius._aead import ffi, lib
    except ImportError:
        return False
    if os.environ.get("PLINIUS_LIBCRYPTO", "").strip():
        return True
    err = ffi.new("char[]", 256)
    return bool(lib.plx_crypto_load(ffi.NULL, err, len(err)) != ffi.NULL)


ENGINES: dict[str, tuple[type[Engine] | str, Callable[[], bool]]] = {
    # native/aead.c: libcrypto on all cores; built only where OpenSSL's headers are
    "openssl": ("plinius.core.crypto_native:OpenSSLEngine", openssl_usable),
    "cryptography": (CryptographyEngine, _cryptography_usable),
    "pycryptodome": (PycryptodomeEngine, lambda: True),
}

ENGINE_GROUP = "plinius.engines"
#: what to install for a known engine that is missing here
ENGINE_HINTS: dict[str, str] = {
    "openssl": "reinstall plinius with OpenSSL's headers (apt-get install libssl-dev)",
    "cryptography": "pip install 'plinius[fast]' (needs cryptography >= 42 with encrypt_into)",
}

ENGINE_REGISTRY: Registry[Engine] = Registry(
    kind="crypto engine",
    group=ENGINE_GROUP,
    base=Engine,
    builtins=ENGINES,
    hints=ENGINE_HINTS,
    override_env="PLINIUS_OVERRIDE_ENGINES",
    unknown_error=ConfigError,
    load_error=ConfigError,
    how_to_add=f"third-party engines register the entry-point group {ENGINE_GROUP!r} "
    "or call register_engine()",
)


def register_engine(
    name: str,
    cls: type[Engine] | str,
    *,
    usable: Callable[[], bool] | None = None,
    replace: bool = False,
) -> None:
    """Register engine ``cls`` (or ``"module:Class"``) as ``name`` for this process.

    ``usable`` says whether its dependencies are installed (default: the class imports).
    Replacing an existing name needs ``replace=True``.
    """
    ENGINE_REGISTRY.register(name, cls, usable=usable, replace=replace)


def engine_names() -> list[str]:
    """Every registered engine name, installed or not (built-ins first, fastest first)."""
    return list(ENGINE_REGISTRY.entries())


def available_engines() -> list[str]:
    """Names of the engines installed here, fastest first."""
    return [name for name in ENGINE_REGISTRY.entries() if ENGINE_REGISTRY.is_usable(name)]


#: what ``auto`` is built by; loaded by name like the ``openssl`` engine above, because it
#: measures and builds the engines of this module (an import would be a loop)
AUTO = "plinius.core.crypto_choice:make_auto"
MODES = ("sync", "async")


def make_engine(key: bytes, name: str | None = None, *, mode: str = "sync") -> Engine:
    """Build engine ``name`` for ``key``; ``None``/``"auto"``: per call size, the way measured
    fastest on this machine (:mod:`plinius.core.crypto_choice`). ``mode="sync"`` minimises wall
    time (the mirror has every core), ``"async"`` CPU time (it shares them with training)."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: give one of {', '.join(MODES)}")
    if name is None or name == "auto":
        module, _, attr = AUTO.partition(":")
        built: Engine = getattr(importlib.import_module(module), attr)(key, mode=mode)
        return built
    return ENGINE_REGISTRY.load_usable(name)(key)


# --- key files -------------------------------------------------------------------------------

KEY_FILE_HEADER = "plinius-key-v1"


def generate_key() -> bytes:
    return os.urandom(KEY_BYTES)


def write_key_file(path: str | Path, key: bytes) -> None:
    """Create a new key file with mode 0600; refuse to overwrite an existing one.

    ``O_EXCL | O_NOFOLLOW``: a file or symlink planted at ``path`` is refused, never written.
    """
    p = Path(path)
    try:
        create_exclusive(p, f"{KEY_FILE_HEADER} {key.hex()}\n".encode(), mode=0o600)
    except FileExistsError:
        raise ConfigError(
            f"{p} already exists: refusing to overwrite a key (a lost key makes its mirrors "
            "unreadable); choose another path or delete it yourself"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create key file {p}: {exc.strerror}") from None


_warned_key_modes: set[str] = set()


def read_key_file(path: str | Path) -> bytes:
    """Read a key file written by :func:`write_key_file` (or 16 raw bytes, or 32 hex digits).

    Warns once per file on stderr when group or others may read it: the key is the owner's data.
    """
    p = Path(path)
    if str(path) == "":
        raise ConfigError("key file path is empty: give a file")
    try:
        with opened_regular(p, "key file") as fd:
            st = os.fstat(fd)
            if st.st_size > KEY_FILE_MAX:
                raise ConfigError(
                    f"key file {p} is {fmt_bytes(st.st_size)}, more than the "
                    f"{fmt_bytes(KEY_FILE_MAX)} a key file can be: give the right file"
                )
            mode = st.st_mode
            raw = os.read(fd, KEY_FILE_MAX)
    except NotFoundError:
        raise ConfigError(
            f"key file {p} does not exist: create one with `plinius keygen`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {p}: {exc.strerror}") from None
    if mode & 0o077 and str(p) not in _warned_key_modes:
        _warned_key_modes.add(str(p))
        print(
            f"warning: key file {p} is readable by others (mode {mode & 0o777:04o}); "
            f"run `chmod 600 {p}`",
            file=sys.stderr,
        )
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.decode("ascii", errors="replace").strip()
    if text.startswith(KEY_FILE_HEADER):
        text = text[len(KEY_FILE_HEADER) :].strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{p} is not a plinius key file: expected '{KEY_FILE_HEADER} <32 hex digits>' "
            f"or {KEY_BYTES} raw bytes"
        )
    return key


def check_key_matches(what: str, found: bytes, engine: Engine) -> None:
    """Raise :class:`WrongKeyError` when the stored key id is not the engine's."""

    if not hmac.compare_digest(found, engine.key_id):
        raise WrongKeyError(what, found.hex(), engine.key_id.hex())


__all__ = [
    "IV_BYTES",
    "KEY_BYTES",
    "OVERHEAD",
    "TAG_BYTES",
    "CryptographyEngine",
    "Engine",
    "PycryptodomeEngine",
    "associated_data",
    "available_engines",
    "engine_names",
    "generate_key",
    "key_id",
    "make_engine",
    "read_key_file",
    "register_engine",
    "write_key_file",
]
