"""The fixed host cost of one ``TorchMirror.mirror()``: what a small model pays per mirror
beyond sealing its bytes, against ``torch.save`` of the same state (the overhead section's
"tiny model" row, and a profiling helper)::

    python -m plinius.lab.bench.mirror_cost --rounds 200            # figures with intervals
    python -m plinius.lab.bench.mirror_cost --profile tiny-sync     # cProfile of one case

Cases: ``tiny`` (``Linear(10, 10)`` + SGD momentum) and ``cnn`` (``examples/torch_mnist.py``'s
CNN + SGD momentum), each ``sync`` and ``async`` (async: the seconds the loop waits, i.e. the
snapshot, and separately the whole save until flushed), on ``romulus:`` in RAM (or another
backend kind given with ``--backend``). Rounds are interleaved: every case once per round, in
rotated order.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plinius.lab.bench.stats import Interval, median_interval, ratio_interval

MODELS = ("tiny", "cnn")
MODES = ("sync", "async")
KIND = "fixed_cost"  # the overhead section's row kind
TINY_MODEL = "Linear(10, 10) + SGD momentum (TorchMirror)"
CNN_MODEL = "examples/torch_mnist.py CNN + SGD momentum (TorchMirror)"
#: the tiny model's synchronous mirror against ``torch.save`` of the same state (into memory)
TINY_VS_TORCH_SAVE = "tiny-sync/tiny-torch.save"


@dataclass
class Case:
    """One model mirrored one way: ``run()`` mirrors once and returns the host seconds."""

    name: str
    run: Callable[[], float]
    #: waits for what ``run`` left in flight (an asynchronous mirror), untimed
    settle: Callable[[], None] | None = None


def _model(kind: str) -> tuple[Any, Any]:
    import torch

    from plinius.torch.mnist_cnn import Net

    torch.manual_seed(0)
    model = torch.nn.Linear(10, 10) if kind == "tiny" else Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(4, 10) if kind == "tiny" else torch.randn(4, 1, 28, 28)
    model(x).sum().backward()  # one step: the optimizer's state exists, as in training
    opt.step()
    return model, opt


@contextmanager
def cases(
    backend: str = "romulus", root: str | None = None, threads: int = 1
) -> Iterator[list[Case]]:
    """Every (model, mode) case plus ``torch.save`` of each model, on throw-away instances of
    ``backend`` under ``root`` (default: the lab's RAM directory), a throw-away key and
    simulated CPU; torch on ``threads`` threads (the overhead section's setting: 1)."""
    import torch

    torch.set_num_threads(threads)

    from plinius.core.crypto import generate_key, write_key_file
    from plinius.enclave.platform import SimulatedPlatform
    from plinius.lab.plan import default_spec, root_dir
    from plinius.torch import TorchMirror

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="plinius-cost-", dir=root or root_dir("shm")
        )))  # fmt: skip
        write_key_file(tmp / "owner.key", generate_key())
        platform = SimulatedPlatform(tmp / "platform", state_dir=tmp / "state")
        out: list[Case] = []
        for kind in MODELS:
            model, opt = _model(kind)

            def save(model: Any = model, opt: Any = opt) -> float:
                t0 = time.perf_counter()
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
                return time.perf_counter() - t0

            out.append(Case(f"{kind}-torch.save", save))
            for mode in MODES:
                d = tmp / f"{kind}-{mode}"
                d.mkdir()
                m, o = _model(kind)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    tm = TorchMirror(
                        m,
                        o,
                        backend=default_spec(backend, d),
                        key_file=str(tmp / "owner.key"),
                        asynchronous=mode == "async",
                        platform=platform,
                    )
                stack.callback(tm.close)
                tm.restore()
                tm.mirror()  # first mirror: layout, pool growth, snapshot memory
                tm.flush()

                def mirror(tm: Any = tm) -> float:
                    return tm.mirror()

                out.append(Case(f"{kind}-{mode}", mirror, tm.flush))
                if mode == "async":

                    def whole(tm: Any = tm) -> float:
                        t0 = time.perf_counter()
                        tm.mirror()
                        tm.flush()
                        return time.perf_counter() - t0

                    out.append(Case(f"{kind}-async+flush", whole))
        yield out


def measure(
    rounds: int, backend: str = "romulus", root: str | None = None, threads: int = 1
) -> dict[str, list[float]]:
    """Host seconds of each case, one sample per round, rounds interleaved and rotated."""
    samples: dict[str, list[float]] = {}
    with cases(backend, root, threads) as cs:
        for c in cs:
            samples[c.name] = []
        for r in range(rounds):
            k = r % len(cs)
            for c in [*cs[k:], *cs[:k]]:
                samples[c.name].append(c.run())
                if c.settle is not None:  # an async mirror in flight is drained (untimed)
                    c.settle()
    return samples


def fixed_cost_row(rounds: int, backend: str = "romulus") -> dict[str, Any]:
    """The overhead section's fixed-cost row: host ms per mirror of each case (median and 95 %
    interval over ``rounds`` interleaved rounds), and the tiny model's synchronous mirror as a
    multiple of ``torch.save`` (paired by round); "not run" and why without torch."""
    from plinius.lab.bench.torch_section import torch_unavailable

    row: dict[str, Any] = {"kind": KIND, "model": TINY_MODEL, "backend": backend}
    why = torch_unavailable()
    if why:
        return {**row, "not_run": why}
    samples = measure(rounds, backend)
    tiny, save = TINY_VS_TORCH_SAVE.split("/")
    return {
        **row,
        "models": {"tiny": TINY_MODEL, "cnn": CNN_MODEL},
        "rounds": rounds,
        "samples": samples,
        "ms": {k: median_interval([x * 1e3 for x in v]).as_json() for k, v in samples.items()},
        "tiny_vs_torch_save": ratio_interval(samples[tiny], samples[save]).as_json(),
    }


def summary(samples: dict[str, list[float]]) -> list[str]:
    """One line per case: median host ms with its 95 % interval; and ratio to ``torch.save``."""
    lines = []
    for name, xs in samples.items():
        iv: Interval = median_interval([x * 1e3 for x in xs])
        line = f"{name:22s} {iv.median:8.3f} ms  [{iv.lo:.3f}–{iv.hi:.3f}]"
        base = samples.get(name.split("-")[0] + "-torch.save")
        if base and not name.endswith("torch.save"):
            ratio = ratio_interval(xs, base)
            line += f"   ×{ratio.median:.1f} torch.save [{ratio.lo:.1f}–{ratio.hi:.1f}]"
        lines.append(line)
    return lines


def profile(case: str, n: int, backend: str = "romulus", top: int = 30, threads: int = 1) -> str:
    """cProfile of ``n`` runs of one case (internal time, the top ``top`` functions)."""
    import cProfile
    import pstats

    with cases(backend, threads=threads) as cs:
        c = next(c for c in cs if c.name == case)
        for _ in range(20):
            c.run()
            if c.settle is not None:
                c.settle()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            c.run()
            if c.settle is not None:
                c.settle()
        prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--backend", default="romulus")
    p.add_argument("--root", default=None, help="directory for the throw-away instances")
    p.add_argument("--profile", default=None, help="a case name, e.g. tiny-sync")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    args = p.parse_args(argv)
    if args.profile:
        print(profile(args.profile, args.rounds, args.backend, args.top, args.threads))
        return
    samples = measure(args.rounds, args.backend, args.root, args.threads)
    print(f"{args.backend}: host ms per mirror, median [95 % interval], {args.rounds} rounds")
    for line in summary(samples):
        print(line)


if __name__ == "__main__":
    main()
