"""Finding the fio binary and running one job file: the only place plinius starts fio.

fio is an external tool, so everything here fails with a message that says what was found and how
to fix it (``ToolMissingError``), and a failing fio run is returned, not raised, so a sweep keeps
the results of every job that did run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from plinius.core.errors import ToolMissingError

#: fio 3.0 introduced the JSON fields parsed here (``bw_bytes``, ``clat_ns`` percentiles).
MIN_VERSION: tuple[int, int] = (3, 0)
#: environment variable naming the fio binary to use instead of the one on PATH
FIO_ENV = "PLINIUS_FIO"
INSTALL_HINT = "install it with `apt-get install fio` (Debian/Ubuntu) or `dnf install fio` (Fedora)"

_VERSION_RE = re.compile(r"fio-(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"fio-3.33"`` → ``(3, 33)``; also ``fio-3.1-53-gabc``, ``fio-2.1.10``; None if not fio's."""
    m = _VERSION_RE.search(text)
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def fmt_version(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


@dataclass(frozen=True)
class FioRun:
    """One fio invocation: exit status, the JSON it printed (if any) and its stderr."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class FioTool:
    """A fio binary that passed the version check."""

    path: str
    version: tuple[int, ...]
    version_text: str = field(default="")

    @cached_property
    def engines(self) -> frozenset[str]:
        """I/O engines this build has (``fio --enghelp``), e.g. to know whether libpmem exists."""
        try:
            res = subprocess.run(
                [self.path, "--enghelp"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return frozenset()
        return frozenset(
            line.strip() for line in res.stdout.splitlines()[1:] if line.startswith("\t")
        )

    def run_job_file(
        self,
        job_file: str | os.PathLike[str],
        env: Mapping[str, str],
        timeout: float,
        client: str | None = None,
    ) -> FioRun:
        """Run ``job_file`` with JSON output; ``env`` adds the job file's ``${PLINIUS_*}``.

        With ``client`` (fio's ``HOST,PORT``) the job runs on that ``fio --server``; this fio
        expands ``${...}`` from ``env`` before it sends the job, so the values reach the server.
        """
        cmd = [self.path, "--output-format=json"]
        cmd += [f"--client={client}"] if client else []
        cmd.append(str(job_file))
        try:
            res = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env={**os.environ, **env},
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return FioRun(-9, out, err + f"\nfio timed out after {timeout:.0f} s", timed_out=True)
        except OSError as exc:
            return FioRun(-1, "", f"cannot run {self.path}: {exc.strerror}")
        return FioRun(res.returncode, res.stdout, res.stderr)

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "version": fmt_version(self.version)}


def find_fio(min_version: tuple[int, int] = MIN_VERSION) -> FioTool:
    """The fio to use (``$PLINIUS_FIO`` or ``fio`` on PATH), checked to be recent enough."""
    override = os.environ.get(FIO_ENV)
    if override:
        path = shutil.which(override) if os.sep not in override else override
        if not path or not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ToolMissingError(
                f"fio not found: {FIO_ENV}={override} is not an executable file; point it at "
                f"fio or unset it to use the fio on PATH ({INSTALL_HINT})"
            )
    else:
        path = shutil.which("fio")
        if not path:
            raise ToolMissingError(
                f"fio not found on PATH: {INSTALL_HINT}, or set {FIO_ENV} to its path"
            )
    try:
        res = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolMissingError(f"cannot run {path} --version: {exc}; {INSTALL_HINT}") from None
    text = (res.stdout.strip() or res.stderr.strip()).splitlines()
    first = text[0] if text else ""
    version = parse_version(first)
    if version is None:
        raise ToolMissingError(
            f"`{path} --version` printed {first!r}, not a fio version (expected e.g. fio-3.33): "
            f"is {path} really fio? {INSTALL_HINT}"
        )
    if version[:2] < min_version:
        raise ToolMissingError(
            f"fio {fmt_version(version)} at {path} is too old: plinius needs fio >= "
            f"{fmt_version(min_version)} (for bw_bytes and clat_ns in its JSON); {INSTALL_HINT}"
        )
    return FioTool(str(Path(path)), version, first)
