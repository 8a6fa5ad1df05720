"""A throw-away software TPM (``swtpm socket --tpm2``) on free loopback ports, for the tests
and the bench's freshness cost: manufactured by ``swtpm_setup`` with an EK, its certificate
and a local CA of its own (the trust root its quotes are checked against).

swtpm is a software TPM: the TPM 2.0 command set, keys and NV as a real TPM keeps them, but no
hardware isolation and software speed. Whoever holds its state directory holds the TPM (it
could roll the TPM's NV back), so it stands in for a TPM in tests only.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from plinius.core.errors import ConfigError

_LOCALCA_CONF = (
    "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n"
    "certserial = {ca}/certserial\n"
)
_LOCALCA_OPTIONS = "--platform-manufacturer plinius\n--platform-version 1\n--platform-model swtpm\n"
_SETUP_CONF = (
    "create_certs_tool = /usr/bin/swtpm_localca\n"
    "create_certs_tool_config = {d}/swtpm-localca.conf\n"
    "create_certs_tool_options = {d}/swtpm-localca.options\n"
    "active_pcr_banks = sha256\n"
)
INSTALL_HINT = "apt-get install swtpm swtpm-tools"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ConfigError(f"{tool} is not installed: {INSTALL_HINT}")
    return path


def manufacture(base: Path) -> Path:
    """A new TPM's state in ``base/state`` (EK, EK certificate, platform certificate, NV
    locked) and its CA in ``base/ca``; returns the CA bundle (issuer + root, PEM)."""
    _need("swtpm_setup")
    state, ca = base / "state", base / "ca"
    state.mkdir(parents=True, exist_ok=True)
    ca.mkdir(parents=True, exist_ok=True)
    (base / "swtpm-localca.conf").write_text(_LOCALCA_CONF.format(ca=ca))
    (base / "swtpm-localca.options").write_text(_LOCALCA_OPTIONS)
    (base / "swtpm_setup.conf").write_text(_SETUP_CONF.format(d=base))
    cmd = [
        "swtpm_setup",
        "--tpm2",
        "--tpmstate",
        str(state),
        "--create-ek-cert",
        "--create-platform-cert",
        "--lock-nvram",
        "--config",
        str(base / "swtpm_setup.conf"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if res.returncode != 0:
        last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
        raise ConfigError(f"swtpm_setup failed: {last[0]}")
    bundle = base / "ca-bundle.pem"
    bundle.write_bytes(
        (ca / "issuercert.pem").read_bytes() + (ca / "swtpm-localca-rootca-cert.pem").read_bytes()
    )
    return bundle


def _free_pair() -> int:
    """A port P with P and P+1 free on 127.0.0.1 (the swtpm TCTI puts control on P+1)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65534:
            continue
        socks: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise ConfigError("no two adjacent free loopback ports for swtpm")


class Swtpm:
    """``swtpm socket --tpm2`` over the TPM state in ``state`` (copied from a manufactured
    template when one is given, so many TPMs share one manufacturing)."""

    def __init__(self, base: Path, *, template: Path | None = None) -> None:
        """``base`` holds the TPM's state (manufactured there unless it already is, or copied
        from ``template``)."""
        self.base = base
        self.state = base / "state"
        if template is not None:
            shutil.copytree(template / "state", self.state)
            self.bundle = template / "ca-bundle.pem"
        elif (base / "ca-bundle.pem").exists() and self.state.exists():
            self.bundle = base / "ca-bundle.pem"  # manufactured before: the same TPM again
        else:
            self.bundle = manufacture(base)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spec(self, platform_dir: Path, **opts: str) -> str:
        """The platform spec of this TPM, with its CA bundle as the trust root."""
        extra = "".join(f",{k}={v}" for k, v in opts.items())
        return f"tpm:swtpm={self.address},dir={platform_dir},ca={self.bundle}{extra}"

    def start(self, port: int = 0) -> Swtpm:
        """Start on ``port`` (control on ``port + 1``; 0: a free pair)."""
        _need("swtpm")
        for _ in range(5):  # a port taken between the probe and swtpm's bind: try another
            self.port = port or _free_pair()
            cmd = [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state}",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
            ]
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                    self._lock_platform_hierarchy()
                    return self
                except OSError:
                    time.sleep(0.01)
            self.stop()
        raise ConfigError("swtpm did not start")

    def _lock_platform_hierarchy(self) -> None:
        """What firmware does at boot: disable the platform hierarchy (swtpm leaves it
        enabled with an empty auth, which would let anyone on the machine clear the TPM)."""
        from plinius.enclave.tpm_link import pytss

        t = pytss()
        e = t.ESAPI(f"swtpm:host=127.0.0.1,port={self.port}")
        try:
            plat = t.constants.ESYS_TR.PLATFORM
            e.hierarchy_control(plat, plat, False)
        finally:
            e.close()

    def stop(self) -> None:
        """An orderly TPM shutdown, then swtpm's own (its state saved), then signals."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            from plinius.enclave.tpm_link import pytss

            t = pytss()
            e = t.ESAPI(f"swtpm:host=127.0.0.1,port={self.port}")
            e.shutdown(t.constants.TPM2_SU.CLEAR)
            e.close()
        with contextlib.suppress(Exception):
            subprocess.run(
                ["swtpm_ioctl", "--tcp", f"127.0.0.1:{self.port + 1}", "-s"],
                capture_output=True,
                timeout=10,
                check=False,
            )
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def throwaway_swtpm() -> Iterator[Swtpm]:
    """A manufactured, started swtpm in a temporary directory, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="plinius-swtpm-"))
    try:
        with Swtpm(base) as tpm:
            yield tpm
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m plinius.lab.swtpm DIR [--port P]``: a software TPM in DIR (manufactured on
    first use), running until interrupted; its platform spec is printed and written to
    ``DIR/spec`` (the platform directory is ``DIR/platform``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m plinius.lab.swtpm", description=main.__doc__)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--port", type=int, default=0, help="server port (control: port+1)")
    args = ap.parse_args(argv)
    base = args.dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    try:
        tpm = Swtpm(base).start(args.port)
    except ConfigError as exc:
        print(f"swtpm: error: {exc}", flush=True)
        return 2
    spec = tpm.spec(base / "platform")
    (base / "spec").write_text(spec + "\n")
    print(f"software TPM (swtpm, no hardware) at {tpm.address}; --platform {spec}", flush=True)
    stop = signal.Signals.SIGTERM
    try:
        signal.signal(stop, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while tpm.proc is not None and tpm.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        tpm.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
