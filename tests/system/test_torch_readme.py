"""README's PyTorch section runs as printed, and its epoch loop (evaluation and LR anneal at
each epoch's end) resumes exactly: SIGKILLed mid-epoch and inside an epoch's end, then run to
the end, it prints what an uninterrupted run prints, bit for bit.

The kills are real SIGKILLs the process sends itself at fixed points (after the N-th optimizer
step, through torch's global step hook; after the N-th epoch line): no dependence on speed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from needs import import_torch

import_torch()

from plinius.core.crypto import generate_key, write_key_file  # noqa: E402

pytestmark = pytest.mark.system

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = README.read_text().split("\n## PyTorch\n", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```py\n(.*?)```", SECTION, flags=re.S)
SPEC = "romulus:/dev/shm/run.pool"
EPOCH_RE = re.compile(r"^epoch (\d+) valid (\S+) lr (\S+)$", re.M)

#: runs before the block: SIGKILL this process after the STEPS-th optimizer step or the
#: LINES-th line printed (0: never)
KILLER = """
import builtins, os, signal
from torch.optim.optimizer import register_optimizer_step_post_hook
STEPS, LINES = {steps}, {lines}
steps, lines, _print = [0], [0], builtins.print
def _step_hook(opt, args, kwargs):
    steps[0] += 1
    if steps[0] == STEPS:
        os.kill(os.getpid(), signal.SIGKILL)
def _counting_print(*a, **k):
    _print(*a, **k, flush=True)
    lines[0] += 1
    if lines[0] == LINES:
        os.kill(os.getpid(), signal.SIGKILL)
register_optimizer_step_post_hook(_step_hook)
builtins.print = _counting_print
"""


def _run(code: str, cwd: Path, spec: str, steps: int = 0, lines: int = 0) -> tuple[int, str]:
    assert SPEC in code, "README's block no longer mirrors to " + SPEC
    program = KILLER.format(steps=steps, lines=lines) + code.replace(SPEC, spec)
    done = subprocess.run(
        [sys.executable, "-P", "-c", program], cwd=cwd, capture_output=True, text=True,
        timeout=300, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_the_section_has_one_epoch_loop() -> None:
    assert len(BLOCKS) == 1, "README's PyTorch section should show one runnable loop"
    assert "mirror.epochs(" in BLOCKS[0] and "mirror.batches()" in BLOCKS[0]


@pytest.mark.slow  # five interpreters importing torch: ~30 s on 2 busy cores
def test_readme_epoch_loop_runs_and_resumes_exactly(tmp_path: Path, shm_dir: Path) -> None:
    write_key_file(tmp_path / "owner.key", generate_key())  # `plinius keygen --out owner.key`
    code = BLOCKS[0]
    rc, want = _run(code, tmp_path, f"romulus:{shm_dir / 'ref.pool'}")
    assert rc == 0, want
    ref = EPOCH_RE.findall(want)
    assert [int(e) for e, _, _ in ref] == list(range(6)), want
    assert len({lr for _, _, lr in ref}) > 1, "the LR never annealed: the test covers no anneal"

    spec = f"romulus:{shm_dir / 'run.pool'}"
    outs = []
    for steps, lines in ((11, 0), (0, 2), (0, 2)):  # mid-epoch 1; in epoch 2's end; epoch 3's
        rc, out = _run(code, tmp_path, spec, steps, lines)
        assert rc == -signal.SIGKILL, out
        outs.append(out)
    rc, last = _run(code, tmp_path, spec)
    assert rc == 0, last
    outs.append(last)
    got = [m for out in outs for m in EPOCH_RE.findall(out)]
    # epochs 0, 1 then epoch 2 printed before its kill and again after it; every line is the
    # uninterrupted run's, and the last run ends where it ends
    assert [int(e) for e, _, _ in got] == [0, 1, 2, 2, 3, 3, 4, 5], outs
    assert all(m in ref for m in got), (got, ref)
    assert EPOCH_RE.findall(last)[-1] == ref[-1]
