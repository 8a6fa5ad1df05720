"""The simulated SGX platform: its fused root secret, quoting key and trusted storage.

On real hardware the root secret is fused into the CPU and never leaves it; here it is a file
``fuse.key`` (mode 0600) in the platform directory, which stands in for the CPU. Everything an
enclave seals is derived from it with HKDF and the enclave's measurement, so another enclave (a
changed binary or model configuration) cannot unseal it. The quoting key signs quotes; its public
half is what an owner trusts (the stand-in for Intel's attestation service).
"""

from __future__ import annotations

import os
from pathlib import Path

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC

from plinius.errors import ConfigError

FUSE_BYTES = 32


def default_state_dir() -> Path:
    """``$PLINIUS_STATE_DIR``, else ``$XDG_STATE_HOME/plinius``, else ``~/.local/state/plinius``."""
    env = os.environ.get("PLINIUS_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "plinius"


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` exclusively with mode 0600 and make it durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class SimulatedPlatform:
    """One machine's simulated SGX platform, kept in a state directory."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(state_dir) if state_dir is not None else default_state_dir()
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the platform state directory {self.dir}: {exc.strerror}; "
                "set PLINIUS_STATE_DIR to a writable directory"
            ) from None
        self._fuse = self._load_or_create(self.dir / "fuse.key", lambda: os.urandom(FUSE_BYTES))
        pem = self._load_or_create(
            self.dir / "quoting.pem",
            lambda: ECC.generate(curve="ed25519").export_key(format="PEM").encode(),
        )
        self._quoting = ECC.import_key(pem)

    @staticmethod
    def _load_or_create(path: Path, make: object) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = make()  # type: ignore[operator]
        try:
            _write_private(path, data)
        except FileExistsError:  # another process created it first: use theirs
            return path.read_bytes()
        return bytes(data)

    def derive(self, purpose: bytes, measurement: bytes, length: int = 16) -> bytes:
        """A key only code with this ``measurement`` obtains (SGX EGETKEY, MRENCLAVE policy)."""
        key = HKDF(self._fuse, length, salt=measurement, hashmod=SHA256, context=purpose)
        assert isinstance(key, bytes)
        return key

    @property
    def quoting_key(self) -> ECC.EccKey:
        return self._quoting

    @property
    def quoting_public_pem(self) -> str:
        """What an owner pins to verify quotes from this platform."""
        return str(self._quoting.public_key().export_key(format="PEM"))
