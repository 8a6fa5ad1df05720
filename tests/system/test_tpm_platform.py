"""The tpm platform against a real (software) TPM 2.0: ``swtpm socket --tpm2`` started per test
on free loopback ports. Crashes at every step of a freshness change, real SIGKILLs of the
trainer and of a TorchMirror run, and exact resume on the TPM platform."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cli_runner import cli_argv, run_cli, train_args

from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import RollbackError
from plinius.enclave import tpm_link
from plinius.enclave.counter import Extent, MirrorCounters, Stamp
from plinius.enclave.platform import open_platform

SLOT = "5" * 32

# The child makes SAVES saves (begin + commit) on one slot of the TPM platform ``argv[1]`` and
# SIGKILLs itself at the ``argv[2]``-th step of the counter protocol (0: never; it then prints
# how many steps it took). ``argv[3]``: the first version it saves.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import plinius.enclave.counter_table as ct
    from plinius.enclave.counter import Extent, MirrorCounters, Stamp
    from plinius.enclave.platform import open_platform

    spec, kill_at, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    steps = []

    def reached(step):
        steps.append(step)
        print(step, file=sys.stderr, flush=True)
        if len(steps) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    ct._reached = reached
    counters = MirrorCounters(open_platform(spec, state_dir=Path(sys.argv[4])))
    slot = "5" * 32
    state = counters.read(slot)
    for v in range(first, first + 3):
        stamp = Stamp(b"r" * 16, v, bytes([v]) * 16)
        counters.begin(slot, stamp, Extent(1000 + v, 100))
        counters.commit(slot, stamp)
    print(len(steps), " ".join(steps))
    """
)


def _child(spec: str, kill_at: int, first: int, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-c", CHILD, spec, str(kill_at), str(first), str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_a_crash_at_every_step_of_a_change_is_recovered_without_refusal(
    swtpm: Any, tmp_path: Path
) -> None:
    """Killed at each step of the counter protocol (the first setup, an increment before the
    table is written, the table written, the increment after it), the next process reads the
    slot without a refusal, finds the state from before or after the interrupted change (at
    most the one save in flight), and goes on saving."""
    state = tmp_path / "state"
    clean = _child(swtpm.spec(tmp_path / "probe", nv="0x01000010"), 0, 1, state)
    assert clean.returncode == 0, clean.stderr
    total = int(clean.stdout.split()[0])
    names = set(clean.stdout.split()[1:])
    assert {"define", "setup-increment", "increment-before", "table-written"} <= names
    assert "increment-after" in names
    for kill_at in range(1, total + 1):
        spec = swtpm.spec(tmp_path / f"p{kill_at}", nv=f"{0x01000100 + kill_at:#x}")
        killed = _child(spec, kill_at, 1, state)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stdout, killed.stderr)
        counters = MirrorCounters(open_platform(spec, state_dir=state))
        if killed.stderr.split()[-1] == "setup-increment":
            # the one window: the platform's first setup, before any mirror existed, killed
            # between its first increment and its first table looks like a deleted table
            with pytest.raises(RollbackError, match="first setup was killed") as err:
                counters.read(SLOT)
            assert "\n" not in str(err.value)
            continue
        found = counters.read(SLOT)  # never refused
        if found is not None:
            done = {found.committed, found.pending} - {None}
            assert all(s.version <= 3 for s in done)  # type: ignore[union-attr]
            assert (
                found.pending is None
                or found.committed is None
                or (found.pending.version == found.committed.version + 1)
            )
        again = _child(spec, 0, 10, state)
        assert again.returncode == 0, (kill_at, again.stderr)
        final = MirrorCounters(open_platform(spec, state_dir=state)).read(SLOT)
        assert final is not None and final.committed is not None
        assert final.committed.version == 12 and final.pending is None


def test_a_table_orphaned_by_a_kill_is_never_accepted_after_recovery(
    swtpm: Any, tmp_path: Path
) -> None:
    """A writer killed after writing its table and before its increment leaves an orphan. The
    attacker hides it (puts the table from before back), the next process recovers and saves
    on; the orphan, put back later, is refused: no two tables ever share a counter value."""
    spec, state = swtpm.spec(tmp_path / "p"), tmp_path / "state"
    assert _child(spec, 0, 1, state).returncode == 0  # three saves: versions 1..3
    table = tmp_path / "p" / "freshness.table"
    before = table.read_bytes()
    killed = _child(spec, 2, 4, state)  # version 4's begin: its table written, not counted
    assert killed.returncode == -signal.SIGKILL
    assert killed.stderr.split() == ["increment-before", "table-written"]
    orphan = table.read_bytes()
    assert orphan != before
    table.write_bytes(before)  # the attacker hides the orphan
    counters = MirrorCounters(open_platform(spec, state_dir=state))
    found = counters.read(SLOT)  # the change was in flight: the table from before is accepted
    assert found is not None and found.committed is not None and found.committed.version == 3
    stamp = Stamp(b"r" * 16, 4, b"\x44" * 16)
    counters.begin(SLOT, stamp, Extent(2000, 100))  # recovery steps over the orphan's value
    counters.commit(SLOT, stamp)
    newest = table.read_bytes()
    table.write_bytes(orphan)
    with pytest.raises(Exception, match="rollback refused"):
        MirrorCounters(open_platform(spec, state_dir=state)).read(SLOT)
    table.write_bytes(newest)
    final = MirrorCounters(open_platform(spec, state_dir=state)).read(SLOT)
    assert final is not None and final.committed == stamp


@pytest.fixture
def owner(tmp_path: Path) -> dict[str, Any]:
    key = tmp_path / "owner.key"
    write_key_file(key, generate_key())
    env = {**os.environ, "PLINIUS_STATE_DIR": str(tmp_path / "state")}
    data = tmp_path / "data.pld"
    res = run_cli("owner", "encrypt-data", "--key-file", str(key), "--out", str(data), env=env)
    assert res.returncode == 0, res.stderr
    return {"key": key, "data": data, "env": env}


def _digest(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout)["weights_sha256"])


@pytest.mark.parametrize("kind", ["tmpfs", "romulus"])
def test_train_on_the_tpm_is_killed_and_resumes_bit_identically(
    swtpm: Any, owner: dict[str, Any], tmp_path: Path, shm_dir: Path, kind: str
) -> None:
    """``plinius train --platform tpm:swtpm=...``: SIGKILLed at random moments, many times
    (often mid-save: a mirror every iteration), resumed, ends with the weights of a run never
    interrupted; the report names the TPM platform."""
    spec = f"tmpfs:{shm_dir / 'm'}" if kind == "tmpfs" else f"romulus:{shm_dir / 'm.pool'}?size=32M"
    platform = swtpm.spec(tmp_path / "platform")
    iterations = 120
    args = train_args(spec, owner["key"], owner["data"], iterations, "--json")
    ref = run_cli(
        *train_args(f"tmpfs:{shm_dir / 'ref'}", owner["key"], owner["data"], iterations),
        "--json", "--no-mirror", "--platform", platform, env=owner["env"],
    )  # fmt: skip
    want = _digest(ref)
    rng = random.Random(f"tpm-{kind}")
    kills = int(os.environ.get("PLINIUS_KILLS", "8"))
    log = tmp_path / "loss.csv"
    for _ in range(kills):
        target = rng.randint(1, iterations - 1)
        proc = subprocess.Popen(
            cli_argv(*args, "--platform", platform, "--log", str(log)),
            env=owner["env"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # until it logs `target`
            rows = log.read_text().splitlines()[1:] if log.exists() else []
            if rows and int(rows[-1].split(",")[0]) >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.random() * 0.02)  # then at a random moment: in a step or a save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    done = run_cli(*args, "--platform", platform, env=owner["env"])
    doc = json.loads(done.stdout)
    assert _digest(done) == want
    assert doc["platform"]["kind"] == "tpm" and "software TPM" in doc["platform"]["note"]


TORCH_CHILD = Path(__file__).resolve().parents[1] / "torch_kill_child.py"


def test_torch_mirror_on_the_tpm_is_killed_and_resumes_bit_identically(
    swtpm: Any, tmp_path: Path, shm_dir: Path
) -> None:
    """``TorchMirror(..., platform=open_platform("tpm:swtpm=..."))``: killed at random
    iterations, resumed, bit-identical to an uninterrupted run on the same TPM."""
    pytest.importorskip("torch", reason="torch==2.13.0 is installed only in the Python 3.11 envs")
    key = tmp_path / "owner.key"
    write_key_file(key, generate_key())
    env = {**os.environ, "PLINIUS_STATE_DIR": str(tmp_path / "state")}
    platform = swtpm.spec(tmp_path / "platform")

    def run(spec: str, kill_after: int | None) -> str | None:
        argv = [sys.executable, "-P", str(TORCH_CHILD), spec, str(key), "12", "1", platform]
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if line.startswith("DONE"):
                proc.wait(timeout=60)
                proc.stderr.close()
                return line.split()[1]
            if kill_after is not None and int(line) >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        assert kill_after is not None, err
        return None

    want = run(f"tmpfs:{shm_dir / 'ref'}", None)
    spec = f"tmpfs:{shm_dir / 'm'}"
    for after in (3, 7, 10):
        assert run(spec, after) is None
    assert run(spec, None) == want


def test_counter_every_n_bounds_the_rollback_window_as_stated(
    swtpm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``counter_every=3``: the counter moves on every third change (two increments), the
    changes between rewrite the table at the same value. A table put back is accepted only
    from within the window the description states (up to 2 changes back), never from before
    the counter's last move."""
    moves: list[int] = []
    real = tpm_link.counter_increment
    monkeypatch.setattr(
        tpm_link, "counter_increment", lambda e, h: (moves.append(1), real(e, h))[1]
    )
    platform = open_platform(swtpm.spec(tmp_path / "p", counter_every="3"), state_dir=tmp_path)
    assert "up to 2 changes" in platform.describe()["counter_every"]
    counters = MirrorCounters(platform)
    table = tmp_path / "p" / "freshness.table"
    tables: list[bytes] = []
    per_change: list[int] = []
    for v in range(1, 7):  # six saves: twelve changes
        stamp = Stamp(b"r" * 16, v, bytes([v]) * 16)
        for is_begin in (True, False):
            before = len(moves)
            if is_begin:
                counters.begin(SLOT, stamp, Extent(v, 1))
            else:
                counters.commit(SLOT, stamp)
            per_change.append(len(moves) - before)
            tables.append(table.read_bytes())
    counters.begin(SLOT, Stamp(b"r" * 16, 7, b"7" * 16), Extent(7, 1))  # one change more
    tables.append(table.read_bytes())
    # the first change sets the platform up (one increment), then every third moves it
    assert per_change == [1, 0, *[2, 0, 0] * 3, 2]
    last_move = max(i for i, n in enumerate(per_change) if n == 2)
    newest, accepted = tables[-1], 0
    for i, old in enumerate(tables):
        table.write_bytes(old)
        fresh = MirrorCounters(open_platform(swtpm.spec(tmp_path / "p"), state_dir=tmp_path))
        if i >= last_move:  # written at the counter's current value: inside the window
            assert fresh.read(SLOT) is not None
            assert len(tables) - 1 - i <= 2
            accepted += 1
        else:
            with pytest.raises(RollbackError, match="rollback refused"):
                fresh.read(SLOT)
    assert accepted == 2  # the last move's table and the one change after it
    table.write_bytes(newest)


def test_counter_every_seconds_moves_the_counter_once_the_time_is_up(
    swtpm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moves: list[int] = []
    real = tpm_link.counter_increment
    monkeypatch.setattr(
        tpm_link, "counter_increment", lambda e, h: (moves.append(1), real(e, h))[1]
    )
    platform = open_platform(swtpm.spec(tmp_path / "p", counter_every="1s"), state_dir=tmp_path)
    assert "1 s of saves" in platform.describe()["counter_every"]
    counters = MirrorCounters(platform)
    counters.begin(SLOT, Stamp(b"r" * 16, 1, b"a" * 16), Extent(1, 1))  # setup + first change
    start = len(moves)
    counters.commit(SLOT, Stamp(b"r" * 16, 1, b"a" * 16))
    assert len(moves) == start  # within the second: the table is rewritten, no increment
    time.sleep(1.1)
    counters.begin(SLOT, Stamp(b"r" * 16, 2, b"b" * 16), Extent(1, 1))
    assert len(moves) == start + 2  # the time is up: the counter moves


# The child loads the platform's keyed-hash key and is killed with it loaded (between TPM2_Load
# and its flush): on a TPM without a resource manager (swtpm, /dev/tpm0) the object stays.
KILLED_WITH_A_KEY_LOADED = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from plinius.enclave import tpm_link
    from plinius.enclave.platform import open_platform

    real = tpm_link.pytss().ESAPI.hmac

    def hmac(self, *args, **kw):
        os.kill(os.getpid(), signal.SIGKILL)

    tpm_link.pytss().ESAPI.hmac = hmac
    open_platform(sys.argv[1], state_dir=Path(sys.argv[2])).derive(b"x", bytes(32))
    """
)


def test_keys_left_loaded_by_killed_processes_never_fill_the_tpm(
    swtpm: Any, tmp_path: Path
) -> None:
    """Five processes killed with a key loaded (more than the TPM's three transient slots):
    the next derivation still works (the leftovers are flushed when the slots are full)."""
    spec, state = swtpm.spec(tmp_path / "p"), tmp_path / "state"
    want = open_platform(spec, state_dir=state).derive(b"x", bytes(32))
    for _ in range(5):
        res = subprocess.run(
            [sys.executable, "-P", "-c", KILLED_WITH_A_KEY_LOADED, spec, str(state)],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert res.returncode == -signal.SIGKILL, res.stderr
    assert open_platform(spec, state_dir=state).derive(b"x", bytes(32)) == want


def test_two_crashes_in_a_row_at_any_steps_are_recovered(swtpm: Any, tmp_path: Path) -> None:
    """Review of issue 27 (H3): a change killed at a step, then its recovery killed at each of
    its own steps (the rewrite behind, the increment ahead, the next change's steps): the
    counter is never more than one away from the table, so the next process reads and saves
    on, never refused."""
    state = tmp_path / "state"
    plain = _child(swtpm.spec(tmp_path / "probe", nv="0x01000010"), 0, 1, state)
    first_steps = plain.stdout.split()[1:]
    runs = 0
    for k1 in range(3, min(len(first_steps), 9) + 1):  # past the setup: one save's changes
        for k2 in range(1, 5):
            nv = f"{0x01001000 + 16 * k1 + k2:#x}"
            spec = swtpm.spec(tmp_path / f"p{k1}-{k2}", nv=nv)
            one = _child(spec, k1, 1, state)
            assert one.returncode == -signal.SIGKILL, one.stderr
            two = _child(spec, k2, 10, state)
            if two.returncode == 0:
                continue  # fewer steps than k2 in the recovery: nothing more to cut
            assert two.returncode == -signal.SIGKILL, (k1, k2, two.stderr)
            runs += 1
            counters = MirrorCounters(open_platform(spec, state_dir=state))
            counters.read(SLOT)  # never refused
            again = _child(spec, 0, 20, state)
            assert again.returncode == 0, (k1, k2, again.stderr)
            final = counters.read(SLOT)
            assert final is not None and final.committed is not None
            assert final.committed.version == 22
    assert runs >= 20


# Each child saves SAVES times on its own slot of one platform, as fast as it can.
CONCURRENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from plinius.enclave.counter import Extent, MirrorCounters, Stamp
    from plinius.enclave.platform import open_platform

    counters = MirrorCounters(open_platform(sys.argv[1], state_dir=Path(sys.argv[2])))
    slot = sys.argv[3] * 32
    for v in range(1, int(sys.argv[4]) + 1):
        stamp = Stamp(b"r" * 16, v, bytes([v % 256]) * 16)
        counters.begin(slot, stamp, Extent(v, 1))
        counters.commit(slot, stamp)
    print("done")
    """
)


def test_concurrent_writers_on_one_platform_lose_nothing(swtpm: Any, tmp_path: Path) -> None:
    """Three processes saving on their own slots of one platform at once, one of them naming
    the TPM another way (localhost), take turns through the platform's lock: every save that
    returned is in the table."""
    spec, state = swtpm.spec(tmp_path / "p"), tmp_path / "state"
    open_platform(spec, state_dir=state)  # the key made once, before the race
    spelled = [spec, spec.replace("127.0.0.1:", "localhost:"), spec]  # one TPM, two spellings
    procs = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", CONCURRENT, sp, str(state), c, "25"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c, sp in zip("abc", spelled, strict=True)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "done", err
    counters = MirrorCounters(open_platform(spec, state_dir=state))
    for c in "abc":
        found = counters.read(c * 32)
        assert found is not None and found.committed is not None
        assert found.committed.version == 25 and found.pending is None


def test_a_lazy_table_put_back_after_every_save_cannot_hold_the_counter(
    swtpm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of issue 27 (H2): with ``counter_every=5`` the attacker puts the table of the
    counter's last move back after every save, so its ``lazy`` count never grows. The writer
    only rewrites lazily over its own last table: the put-back table makes it move the
    counter, and from then on that table is refused."""
    moves: list[int] = []
    real = tpm_link.counter_increment
    monkeypatch.setattr(
        tpm_link, "counter_increment", lambda e, h: (moves.append(1), real(e, h))[1]
    )
    spec = swtpm.spec(tmp_path / "p", counter_every="5")
    counters = MirrorCounters(open_platform(spec, state_dir=tmp_path))
    table = tmp_path / "p" / "freshness.table"
    s1 = Stamp(b"r" * 16, 1, b"1" * 16)
    counters.begin(SLOT, s1, Extent(1, 1))
    counters.commit(SLOT, s1)
    v = 1
    while True:  # save until the counter moves: the table it leaves is the one to put back
        before = len(moves)
        v += 1
        s = Stamp(b"r" * 16, v, bytes([v]) * 16)
        counters.begin(SLOT, s, Extent(v, 1))
        counters.commit(SLOT, s)
        if len(moves) > before:
            break
    kept = table.read_bytes()
    before = len(moves)
    v += 1
    s = Stamp(b"r" * 16, v, bytes([v]) * 16)
    counters.begin(SLOT, s, Extent(v, 1))  # lazy: over its own table
    counters.commit(SLOT, s)
    assert len(moves) == before
    table.write_bytes(kept)  # the attacker puts the moved table back (without save v)
    s = Stamp(b"r" * 16, v + 1, bytes([v + 1]) * 16)
    counters.begin(SLOT, s, Extent(v + 1, 1))  # not over its own table: the counter moves
    assert len(moves) == before + 2
    table.write_bytes(kept)
    with pytest.raises(RollbackError, match="rollback refused"):
        MirrorCounters(open_platform(spec, state_dir=tmp_path)).read(SLOT)


def test_wall_clock_steps_never_stretch_the_seconds_window(
    swtpm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of issue 27 (M3 and its re-review): the wall clock stepped a year ahead, or back
    again and again, changes nothing: ``counter_every=Ns`` counts on the process's monotonic
    clock since its own last move."""
    import plinius.enclave.counter_table as ct

    moves: list[int] = []
    real = tpm_link.counter_increment
    monkeypatch.setattr(
        tpm_link, "counter_increment", lambda e, h: (moves.append(1), real(e, h))[1]
    )
    counters = MirrorCounters(
        open_platform(swtpm.spec(tmp_path / "p", counter_every="1s"), state_dir=tmp_path)
    )
    real_time = time.time
    monkeypatch.setattr(ct.time, "time", lambda: real_time() + 365 * 86400)
    counters.begin(SLOT, Stamp(b"r" * 16, 1, b"a" * 16), Extent(1, 1))  # moved "next year"
    monkeypatch.setattr(ct.time, "time", lambda: real_time() - 365 * 86400)  # and "last year"
    before = len(moves)
    counters.commit(SLOT, Stamp(b"r" * 16, 1, b"a" * 16))
    assert len(moves) == before  # within the second, by the monotonic clock: lazy
    time.sleep(1.1)
    counters.begin(SLOT, Stamp(b"r" * 16, 2, b"b" * 16), Extent(1, 1))
    assert len(moves) == before + 2  # the second is up, whatever the wall clock says
