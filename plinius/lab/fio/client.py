"""fio's own client/server mode: the hosts of ``--client``, and a probe of each ``fio --server``.

fio takes a server as ``[ip:|ip6:]HOST[,PORT]`` (a colon before the port does not parse), so the
``HOST[:PORT]`` users type is translated here. Every server is probed with a job on fio's ``null``
engine (no I/O, nothing written) before a sweep starts: an unreachable one fails at once, in one
line naming it, instead of as a column of failed jobs; the probe also reports the server's fio.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plinius.core.errors import BackendError, ConfigError
from plinius.lab.fio.tool import FioTool

#: fio's default server port (``fio --server`` without one)
DEFAULT_PORT = 8765
#: the host of a target measured here (a fio server's targets name the server)
LOCAL = "local"
_PROBE_JOB = "[plinius-probe-{i}]\nioengine=null\nsize=4k\n"
_NOT_DIR_RE = re.compile(r"fio: (.*) is not a directory")
#: ``hostname=vm, be=0, 64-bit, os=Linux, arch=x86-64, fio=fio-3.33, flags=1``
_PROBE_RE = re.compile(r"hostname=([^,]*),.*?os=([^,]*), arch=([^,]*), fio=([^,\s]*)")


class FioServerError(BackendError):
    """A ``fio --server`` named in ``--client`` cannot be reached or does not answer as fio."""


@dataclass(frozen=True)
class FioClient:
    """One ``fio --server`` to run the jobs on."""

    host: str
    port: int = DEFAULT_PORT

    @property
    def ipv6(self) -> bool:
        return ":" in self.host

    @property
    def loopback(self) -> bool:
        """True for a server on this machine (``localhost``, 127.0.0.0/8, ``::1``): its
        directories are this machine's, so their mount can be read here."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def label(self) -> str:
        """``host:port`` (``[v6]:port``): how the host is named in every row."""
        return f"[{self.host}]:{self.port}" if self.ipv6 else f"{self.host}:{self.port}"

    @property
    def fio_arg(self) -> str:
        """The value of fio's ``--client=``: ``ip6:`` marks an IPv6 literal, a comma the port."""
        return f"{'ip6:' if self.ipv6 else ''}{self.host},{self.port}"


def _port(text: str, item: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"--client {item!r}: port {text!r} is not a number in 1..65535")
    return int(text)


def parse_clients(text: str) -> list[FioClient]:
    """``HOST[:PORT][,HOST[:PORT]...]`` (``[V6]:PORT`` for IPv6) into clients, in order."""
    out: list[FioClient] = []
    for raw in text.split(","):
        item = raw.strip()
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            port = DEFAULT_PORT
            if not sep or (rest and not rest.startswith(":")):
                raise ConfigError(f"--client {item!r}: expected [IPV6] or [IPV6]:PORT")
            if rest:
                port = _port(rest[1:], item)
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ConfigError(f"--client {item!r}: {host!r} is not an IPv6 address") from None
        else:
            host, sep, p = item.partition(":")
            port = _port(p, item) if sep else DEFAULT_PORT
        if not host or any(c.isspace() for c in host):
            raise ConfigError(
                f"--client {text!r}: empty or malformed host in {item!r}; expected "
                "HOST[:PORT][,HOST[:PORT]...]"
            )
        c = FioClient(host, port)
        if c in out:
            raise ConfigError(f"--client {text!r}: {c.label} is given twice")
        out.append(c)
    return out


def _probe_job(directories: list[str]) -> str:
    jobs = [_PROBE_JOB.format(i=i) + f"directory={d}\n" for i, d in enumerate(directories)]
    return "".join(jobs) or _PROBE_JOB.format(i=0)


def probe(
    fio: FioTool, client: FioClient, directories: list[str], timeout: float = 30.0
) -> dict[str, Any]:
    """Facts of the server at ``client`` (its hostname, fio, OS); raises when it does not answer
    or one of ``directories`` is not a directory there (fio would not create it)."""
    hint = (
        f"start `fio --server={'ip6:::' if client.ipv6 else 'ip:0.0.0.0'},{client.port}` on "
        f"{client.host} (or fix --client) "
        "and check that the port is open"
    )
    with tempfile.TemporaryDirectory(prefix="plinius-fio-probe-") as tmp:
        job = Path(tmp) / "probe.fio"
        job.write_text(_probe_job(directories))
        try:
            res = subprocess.run(
                [fio.path, f"--client={client.fio_arg}", str(job)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FioServerError(
                f"fio server {client.label} did not answer within {timeout:.0f} s: {hint}"
            ) from None
    m = _PROBE_RE.search(res.stdout)
    if res.returncode != 0 or m is None:
        said = " ".join(f"{res.stderr}\n{res.stdout}".split())[:300] or f"exit {res.returncode}"
        raise FioServerError(f"fio server {client.label} unreachable ({said}): {hint}")
    missing = _NOT_DIR_RE.search(res.stdout)
    if missing:
        raise FioServerError(
            f"{missing.group(1)} is not a directory on fio server {client.label}: create it "
            "there or choose another with --remote-dir (or NAME:DIR in --backends)"
        )
    return {
        "host": client.host,
        "port": client.port,
        "label": client.label,
        "hostname": m.group(1).strip(),
        "os": m.group(2).strip(),
        "arch": m.group(3).strip(),
        "fio_version": m.group(4).strip(),
    }
