"""Issue 25: PyTorch's word_language_model loop (examples/torch_word_lm.py: an LSTM carrying its
hidden state from batch to batch, an evaluation and an LR anneal at each epoch's end, AdamW),
SIGKILLed at seeded random points, mid-batch, mid-mirror and inside an evaluation, and resumed
several times: every loss it prints and its final weights and optimizer state are bit-identical
to an uninterrupted run's, and ``plinius verify`` shows the final iteration."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_cli
from needs import import_torch

import_torch()

from plinius.core.crypto import generate_key, write_key_file  # noqa: E402

pytestmark = [pytest.mark.system, pytest.mark.slow]

CHILD = Path(__file__).resolve().parents[1] / "torch_word_lm_child.py"
EPOCHS, BATCHES = 6, 21  # the example's defaults on its text: 21 batches of 8 x 4 words
LOSS_RE = re.compile(r"^\| epoch (\d+) \| batch (\d+) \| loss (\S+)$", re.M)
VALID_RE = re.compile(r"^\| end of epoch (\d+) \| valid loss (\S+)$", re.M)
START_RE = re.compile(r"^starting at epoch (\d+) batch (\d+) of", re.M)


def _argv(spec: str, key: Path, hang: int = 0) -> list[str]:
    return [sys.executable, "-P", str(CHILD), str(hang), "--backend", spec, "--key-file", str(key)]


def _finish(spec: str, key: Path) -> str:
    done = subprocess.run(
        _argv(spec, key), capture_output=True, text=True, timeout=300, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _killed(spec: str, key: Path, rng: random.Random, in_eval: bool) -> str:
    """One run SIGKILLed: inside its first evaluation (``in_eval``), or a random 0-20 ms after
    a random batch line among its next 15 (six such kills end before the run does); what it
    printed."""
    proc = subprocess.Popen(
        _argv(spec, key, hang=1 if in_eval else 0), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    lines: list[str] = []
    left = rng.randint(1, 15)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if in_eval and line.startswith("| hanging in evaluation"):
                break
            if not in_eval and LOSS_RE.match(line.rstrip("\n")):
                left -= 1
                if left == 0:
                    time.sleep(rng.uniform(0.0, 0.02))
                    break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        lines.append(proc.stdout.read())  # what it printed between that line and the kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, f"not killed (exit {proc.returncode}): {err}"
    return "".join(lines)


def _final(out: str) -> list[str]:
    """The test loss and the digests of the weights and of weights + optimizer state."""
    done = [ln for ln in out.splitlines() if ln.startswith(("model ", "state ", "| end of tr"))]
    assert len(done) == 3, out
    return done


def _losses(out: str) -> list[tuple[int, int, str]]:
    return [(int(e), int(b), x) for e, b, x in LOSS_RE.findall(out)]


def test_word_lm_killed_anywhere_resumes_bit_identical(tmp_path: Path, shm_dir: Path) -> None:
    key = tmp_path / "owner.key"
    write_key_file(key, generate_key())
    want = _finish(f"tmpfs:{shm_dir / 'ref'}", key)
    ref = {(e, b): x for e, b, x in _losses(want)}
    ref_valid = dict(VALID_RE.findall(want))
    assert len(ref) == EPOCHS * BATCHES and len(ref_valid) == EPOCHS, want
    lrs = re.findall(r"lr (\d\.\d+)", want)
    assert len(set(lrs)) > 1, "the LR was never annealed: the test would not cover it"

    spec = f"romulus:{shm_dir / 'lm.pool'}"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)  # in the failure message: the kill points can be replayed
    outs = [_killed(spec, key, rng, in_eval=kind == "eval") for kind in
            ("batch", "eval", "batch", "batch", "eval", "batch")]  # fmt: skip
    outs.append(_finish(spec, key))
    starts = [tuple(map(int, m)) for o in outs for m in START_RE.findall(o)]
    assert len(starts) == len(outs), f"seed {seed}: {outs}"
    # every loss printed, redone ones too, is the uninterrupted run's, bit for bit (repr)
    for i, out in enumerate(outs):
        for e, b, x in _losses(out):
            assert x == ref[(e, b)], f"seed {seed}, run {i}, epoch {e} batch {b}"
        for e, x in VALID_RE.findall(out):
            assert x == ref_valid[e], f"seed {seed}, run {i}, valid loss of epoch {e}"
    # a kill inside an evaluation resumes at that epoch's last batch (its end is mirrored with
    # it, every batch before it is mirrored on its own) and redoes the batch and the epoch end
    hung = [i for i, out in enumerate(outs) if "| hanging in evaluation" in out]
    assert len(hung) == 2, f"seed {seed}: {outs}"
    for i in hung:
        epoch = int(re.findall(r"^\| evaluating epoch (\d+)", outs[i], re.M)[-1])
        assert starts[i + 1] == (epoch, BATCHES - 1), f"seed {seed}: {starts}"
        assert (epoch, BATCHES - 1) == _losses(outs[i + 1])[0][:2], f"seed {seed}: not redone"
        later = "".join(outs[i + 1 :])
        assert f"| end of epoch {epoch} |" in later, f"seed {seed}: epoch end not redone"
    assert any(b > 0 for _, b in starts[1:]), f"seed {seed}: never resumed mid-epoch: {starts}"
    assert _final(outs[-1]) == _final(want), f"seed {seed}"

    res = run_cli("verify", "--backend", spec, "--key-file", str(key))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"iteration {EPOCHS * BATCHES} " in res.stdout, res.stdout
