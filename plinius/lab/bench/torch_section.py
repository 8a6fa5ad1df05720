"""The ``torch`` section of ``plinius bench``: TorchMirror against PyTorch users' checkpoints.

On a real-model workload (ResNet-50, BERT-base, GPT-2 small shapes from
:mod:`plinius.lab.bench.workloads`, with SGD-momentum or Adam state populated by one real step),
each contender saves and restores the same ``nn.Module`` and optimizer:
``plinius.torch.TorchMirror`` on each backend, and on the same directories
``torch.save``/``torch.load`` (plaintext; and with AES-GCM + fsync, what an encrypted durable
``torch.save`` costs), ``safetensors`` (model only: it has no optimizer format) and
``torch.distributed.checkpoint`` (``dcp.save``/``dcp.load`` in one process, and
``dcp.async_save``). Every restore lands in the live model and optimizer, which are first zeroed
(untimed) and afterwards compared with the reference (untimed): a contender that does not
restore exactly fails instead of reporting a speed. A contender that cannot run here reports
``not run: <reason>`` in its facts. :func:`torch_overhead` measures what mirroring every N steps
costs the example's training loop (``examples/torch_mnist.py``'s CNN), sync and async.

torch is optional: only this module and :mod:`plinius.torch` import it, inside functions.
"""

from __future__ import annotations

import importlib.util
import io
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from plinius.backends.fsinfo import mount_label, mount_of
from plinius.backends.registry import parse_spec
from plinius.core.crypto import OVERHEAD, Engine, make_engine, read_key_file
from plinius.core.errors import ConfigError, IntegrityError
from plinius.core.fsutil import atomic_writer
from plinius.core.memory import StagingBuffer
from plinius.enclave.platform import Platform, SimulatedPlatform
from plinius.lab.bench.contenders import Contender, timed
from plinius.lab.bench.iteration import MirrorOverhead, from_samples
from plinius.lab.bench.workloads import TensorSpec, make_arrays, optimizer_specs, parameter_specs

SECTION = "torch"
INSTALL_HINT = "pip install 'plinius[torch]'"
SAVE, RESTORE, SAVE_DONE = "save", "restore", "save (until written)"
OPTIMIZERS = ("sgd-momentum", "adam")
EXAMPLE_MODEL = "examples/torch_mnist.py CNN (PyTorch, TorchMirror)"


def torch_unavailable() -> str | None:
    """Why the torch section cannot run here (with the install hint), or None when it can."""
    missing = [m for m in ("torch", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: {INSTALL_HINT}"
    return None


# -- the workload as a live module and optimizer ----------------------------------------------
@dataclass
class TorchWorkload:
    """A module whose ``state_dict`` has exactly the workload's names, shapes and dtypes, its
    optimizer with state from one step, and a reference copy to check every restore against."""

    label: str
    model: Any  # torch.nn.Module
    optimizer: Any  # torch.optim.Optimizer | None
    reference: dict[str, Any]  # name -> tensor clone
    #: zero before and compare after every restore (untimed); asv turns it off once warm, as
    #: it times the whole call
    checking: bool = True

    def state(self) -> dict[str, Any]:
        """``{"model": ..., "optim": ...}``: the state dicts a PyTorch user saves."""
        out: dict[str, Any] = {"model": self.model.state_dict()}
        if self.optimizer is not None:
            out["optim"] = self.optimizer.state_dict()
        return out

    def load_state(self, sd: dict[str, Any]) -> None:
        """Load what :meth:`state` gave (a restore's result) into the live module and optimizer."""
        self.model.load_state_dict(sd["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(sd["optim"])

    def tensors(self, model_only: bool = False) -> dict[str, Any]:
        """Every live tensor by a stable name (optimizer state looked up now: loads replace it)."""
        out = {f"model.{k}": v for k, v in self.model.state_dict(keep_vars=True).items()}
        if self.optimizer is not None and not model_only:
            for pid, st in self.optimizer.state_dict()["state"].items():
                for k, v in st.items():
                    out[f"optim.{pid}.{k}"] = v
        return out

    def nbytes(self, model_only: bool = False) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors(model_only).values())

    def scramble(self, model_only: bool = False) -> None:
        """Zero what a restore must bring back (untimed), so an idle restore cannot pass."""
        import torch

        with torch.no_grad():
            for t in self.tensors(model_only).values():
                t.zero_()

    def check(self, who: str, model_only: bool = False) -> None:
        """Raise :class:`IntegrityError` unless every tensor equals the reference bit for bit."""
        import torch

        live = self.tensors(model_only)
        want = {k: v for k, v in self.reference.items() if not model_only or k.startswith("model.")}
        if live.keys() != want.keys():
            raise IntegrityError(who, f"restored {len(live)} tensors, expected {len(want)}")
        for k, v in want.items():
            t = live[k]
            if t.dtype != v.dtype or t.shape != v.shape or not torch.equal(t.detach(), v):
                raise IntegrityError(who, f"tensor {k} differs after restore")


def _split_label(label: str) -> tuple[str, str | None]:
    name, plus, optimizer = label.partition("+")
    if plus and optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r} in {label!r}; known: {OPTIMIZERS}")
    return name, optimizer if plus else None


def build_workload(
    label: str, specs: Sequence[TensorSpec] | None = None, seed: int = 0
) -> TorchWorkload:
    """The live model and optimizer of ``label`` (``resnet50+sgd-momentum``, ``bert-base``...).

    ``specs`` replaces the architecture's parameter list (tests use a truncated one); parameters
    are the tensors the architecture's optimizer state covers, the rest are buffers.
    """
    import torch
    from torch import nn

    name, optimizer_name = _split_label(label)
    param_names = {
        s.name[len("opt.") : -len(".momentum_buffer")]
        for s in optimizer_specs(name, "sgd-momentum")
    }
    specs = list(parameter_specs(name) if specs is None else specs)
    model = nn.Module()
    for spec, (_, arr) in zip(specs, make_arrays(specs, seed), strict=True):
        *path, leaf = spec.name.split(".")
        owner = model
        for part in path:
            child = owner._modules.get(part)
            if child is None:
                child = nn.Module()
                owner.add_module(part, child)
            owner = child
        t = torch.from_numpy(arr)  # page-aligned memory, shared: no copy
        if spec.name in param_names:
            owner.register_parameter(leaf, nn.Parameter(t))
        else:
            owner.register_buffer(leaf, t)
    optimizer = None
    params = list(model.parameters())
    if optimizer_name == "sgd-momentum":
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    elif optimizer_name == "adam":
        optimizer = torch.optim.Adam(params, lr=1e-3)
    if optimizer is not None:  # one real step populates its state as training would
        for p in params:
            p.grad = p.detach() * 1e-3
        optimizer.step()
        for p in params:
            p.grad = None
    w = TorchWorkload(label, model, optimizer, {})
    w.reference = {k: v.detach().clone() for k, v in w.tensors().items()}
    return w


# -- contenders ----------------------------------------------------------------------------------
def _dir_facts(d: Path, durability: str) -> dict[str, Any]:
    m = mount_of(d)
    return {"directory": str(d), "file system": mount_label(m), "durability": durability}


def _versions() -> dict[str, str]:
    import safetensors
    import torch

    return {"torch": str(torch.__version__), "safetensors": str(safetensors.__version__)}


#: the durability of the plaintext peers' files
UNSYNCED = "none (no fsync, plaintext)"
#: a contender's ``(name, id)``: ``DISPLAY (WHERE)`` and ``display@where`` in lower case
Named = tuple[str, str]


def _named(display: str, where: str) -> Named:
    return f"{display} ({where})", f"{display.lower()}@{where}"


def _peer_facts(
    d: Path, durability: str, saves: str, engine: Engine | None = None
) -> dict[str, Any]:
    """What a peer writing in ``d`` ran on and saves."""
    facts = {**_dir_facts(d, durability), **_versions()}
    if engine is not None:
        facts["engine"] = engine.name
    facts["saves"] = saves
    return facts


def _restore_op(
    w: TorchWorkload, name: str, load: Callable[[], Any], model_only: bool = False
) -> float:
    if w.checking:
        w.scramble(model_only)
    secs = timed(load)
    if w.checking:
        w.check(name, model_only)
    return secs


def _nothing() -> None:
    """Nothing to close."""


def _contender(
    w: TorchWorkload,
    named: Named,
    facts: dict[str, Any],
    run: Callable[[str], float],
    *,
    ops: tuple[str, ...] = (SAVE, RESTORE),
    close: Callable[[], None] = _nothing,
    model_only: bool = False,
) -> Contender:
    """One contender of the section on ``w`` (its whole state, or its model's with
    ``model_only``)."""
    name, ident = named
    nbytes = w.nbytes(model_only)
    return Contender(SECTION, name, w.label, nbytes, ops, run, close, facts, id=ident)


def _save_restore(
    w: TorchWorkload,
    named: Named,
    facts: dict[str, Any],
    save: Callable[[], Any],
    load: Callable[[], Any],
    *,
    close: Callable[[], None] = _nothing,
    model_only: bool = False,
) -> Contender:
    """A contender whose ``save`` op times ``save`` and whose ``restore`` op times ``load``
    (the live state scrambled before and checked after)."""

    def run(op: str) -> float:
        if op == SAVE:
            return timed(save)
        return _restore_op(w, named[0], load, model_only)

    return _contender(w, named, facts, run, close=close, model_only=model_only)


def _torch_save(w: TorchWorkload, d: Path, named: Named) -> Contender:
    """``torch.save`` of both state dicts to one file, ``torch.load`` + ``load_state_dict``."""
    import torch

    path = d / "torch-save.pt"
    return _save_restore(
        w,
        named,
        _peer_facts(d, UNSYNCED, "model + optimizer"),
        lambda: torch.save(w.state(), path),
        lambda: w.load_state(torch.load(path, weights_only=True)),
    )


def _torch_save_sealed(w: TorchWorkload, d: Path, engine: Engine, named: Named) -> Contender:
    """What an encrypted, durable ``torch.save`` costs: pickle to memory, AES-GCM, write, fsync,
    rename; restore reads, authenticates and decrypts, then ``torch.load`` from memory."""
    import torch

    path = d / "torch-save.pt.sealed"
    name = named[0]
    aad = b"plinius-bench torch.save " + w.label.encode()
    sealed, plain = StagingBuffer(), StagingBuffer()

    def save() -> None:
        buf = io.BytesIO()
        torch.save(w.state(), buf)
        pv = buf.getbuffer()
        out = sealed.view(pv.nbytes + OVERHEAD)
        engine.encrypt_into(aad, pv, out)
        with atomic_writer(path, durable=True) as f:
            f.write(out)

    def load() -> None:
        n = path.stat().st_size
        src = sealed.view(n)
        with open(path, "rb", buffering=0) as f:
            if f.readinto(src) != n:
                raise IntegrityError(name, "short read")
        out = plain.view(n - OVERHEAD)
        engine.decrypt_into(aad, src, out, name)
        w.load_state(torch.load(io.BytesIO(out), weights_only=True))

    def close() -> None:
        sealed.close()
        plain.close()

    facts = _peer_facts(d, "fsync + atomic rename", "model + optimizer", engine)
    return _save_restore(w, named, facts, save, load, close=close)


def _safetensors(w: TorchWorkload, d: Path, named: Named) -> Contender:
    """``safetensors.torch.save_file``/``load_file`` of the model only (no optimizer format)."""
    from safetensors.torch import load_file, save_file

    path = str(d / "model.safetensors")
    return _save_restore(
        w,
        named,
        _peer_facts(d, UNSYNCED, "model only (safetensors has no optimizer format)"),
        lambda: save_file(w.model.state_dict(), path),
        lambda: w.model.load_state_dict(load_file(path)),
        model_only=True,
    )


def _dcp(w: TorchWorkload, d: Path, asynchronous: bool, named: Named) -> Contender:
    """``torch.distributed.checkpoint`` in one process (no process group); the async variant
    times ``dcp.async_save`` until it returns and, separately, until the checkpoint is written."""
    import torch.distributed.checkpoint as dcp

    where = d / ("dcp-async" if asynchronous else "dcp")
    where.mkdir(exist_ok=True)
    name = named[0]

    def load() -> None:
        sd = w.state()
        dcp.load(sd, checkpoint_id=str(where))
        w.load_state(sd)

    def run(op: str) -> float:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
            warnings.simplefilter("ignore", UserWarning)
            if op == RESTORE:
                return _restore_op(w, name, load)
            if not asynchronous:
                return timed(lambda: dcp.save(w.state(), checkpoint_id=str(where)))
            t0 = time.perf_counter()
            future = dcp.async_save(w.state(), checkpoint_id=str(where))
            returned = time.perf_counter() - t0
            future.result()
            return returned if op == SAVE else time.perf_counter() - t0

    facts = _peer_facts(d, UNSYNCED, "model + optimizer")
    facts["process group"] = "none (single process)"
    ops: tuple[str, ...] = (SAVE, RESTORE)
    if asynchronous:
        facts["ops"] = f"'{SAVE}' until async_save returns; '{SAVE_DONE}' until its future is done"
        ops = (SAVE, SAVE_DONE, RESTORE)
    return _contender(w, named, facts, run, ops=ops)


def _torch_mirror(
    w: TorchWorkload, spec: str, key_file: Path, platform: Platform | None, named: Named
) -> Contender:
    """TorchMirror on one backend: ``step`` (every=1) seals and commits, ``restore`` loads it."""
    from plinius.torch import TorchMirror

    tm = TorchMirror(
        w.model, w.optimizer, backend=spec, key_file=str(key_file), every=1, platform=platform
    )
    iteration = 0

    def save() -> None:
        nonlocal iteration
        iteration += 1
        tm.step(iteration)

    def load() -> None:
        got = tm.restore()
        if got != iteration:
            raise IntegrityError(named[0], f"restored iteration {got}, saved {iteration}")

    facts: dict[str, Any] = {"backend": spec, "saves": "model + optimizer + RNG states, sealed"}
    facts.update(_versions())
    return _save_restore(w, named, facts, save, load, close=tm.close)


def _not_run(w: TorchWorkload, name: str, exc: BaseException) -> Contender:
    """A contender that could not be built here: no samples, the reason in its facts."""

    def run(op: str) -> float:
        raise ConfigError(f"not run: {type(exc).__name__}: {exc}")

    facts = {"status": f"not run: {type(exc).__name__}: {exc}"}
    return Contender(SECTION, name, w.label, 0, (), run, facts=facts)


def torch_contenders(
    workload_label: str,
    dirs: dict[str, Path],
    backends: Sequence[str],
    key_file: str | Path,
    *,
    engine: str | None = None,
    specs: Sequence[TensorSpec] | None = None,
    seed: int = 0,
    workload: TorchWorkload | None = None,
    platform: Platform | None = None,
) -> list[Contender]:
    """Every contender of the torch section on one workload, sharing one live model.

    ``dirs`` maps a storage label (``tmpfs``, ``ssd``) to an existing directory the peers write
    in; ``backends`` are TorchMirror backend specs (one TorchMirror each; put them on the same
    storage). ``key_file`` is the owner's key (TorchMirror's, and the sealed ``torch.save``'s
    AES-GCM key); ``engine`` picks the crypto engine of the sealed peer. ``specs`` replaces
    the architecture's parameter list (tests); ``workload`` is a :func:`build_workload` to use
    instead of building one; ``platform`` the simulated CPU TorchMirror keeps its counters on
    (benchmarks pass a throw-away one).
    """
    reason = torch_unavailable()
    if reason:
        raise ConfigError(f"the torch section needs torch and safetensors: {reason}")
    w = workload or build_workload(workload_label, specs, seed)
    sealing = make_engine(read_key_file(key_file), engine)
    out: list[Contender] = []
    builders: list[tuple[Named, Callable[[Named], Contender]]] = []
    for spec in backends:
        where = parse_spec(spec)[0]
        builders.append(
            (
                _named("TorchMirror", where),
                partial(_torch_mirror, w, spec, Path(key_file), platform),
            )
        )
    for label, d in dirs.items():
        peers: list[tuple[str, Callable[[Named], Contender]]] = [
            ("torch.save", partial(_torch_save, w, d)),
            ("torch.save+AES-GCM+fsync", partial(_torch_save_sealed, w, d, sealing)),
            ("safetensors", partial(_safetensors, w, d)),
            ("dcp.save", partial(_dcp, w, d, False)),
            ("dcp.async_save", partial(_dcp, w, d, True)),
        ]
        builders += [(_named(display, label), build) for display, build in peers]
    for named, build in builders:
        try:
            out.append(build(named))
        except Exception as exc:  # reported as "not run", the section goes on
            out.append(_not_run(w, named[0], exc))
    return out


# -- training-loop overhead -----------------------------------------------------------------------
def example_model() -> Any:
    """The CNN of ``examples/torch_mnist.py`` (:class:`plinius.torch.mnist_cnn.Net`)."""
    from plinius.torch.mnist_cnn import Net

    return Net()


#: the training loops the overhead rows time: the example CNN on the embedded digits (one
#: thread, a light step) and ResNet-50 + SGD-momentum on synthetic images (every core: a
#: CPU-bound loop as users run it, which an asynchronous mirror must share the cores with)
LOOPS = ("cnn", "resnet50")
RESNET50_MODEL = "ResNet-50 + SGD-momentum (PyTorch, TorchMirror)"
#: ResNet-50's input for the loaded row: ImageNet's 224 px would make a 10-step block last
#: ~25 s on 2 cores; 128 px keeps the real network and a CPU-bound step of ~0.6 s there
RESNET50_PIXELS = 128
RESNET50_BATCH = 8


@dataclass
class TrainLoop:
    """One training loop to time: what it is called, how to build a fresh model and optimizer,
    and how to draw a batch (from ``rng``, so every mode sees the same kind of data)."""

    label: str
    make: Callable[[], tuple[Any, Any]]
    batch: Callable[[np.random.Generator], tuple[Any, Any]]


def train_loop(kind: str, batch: int, seed: int = 0) -> TrainLoop:
    """The loop ``kind`` (one of :data:`LOOPS`) with ``batch`` samples per step."""
    import torch

    if kind == "cnn":
        from plinius.core.datasets import load_embedded

        data = load_embedded(seed=seed)
        x = torch.from_numpy(data.x_train).reshape(-1, 1, 28, 28)
        y = torch.from_numpy(data.y_train.astype(np.int64))

        def make_cnn() -> tuple[Any, Any]:
            model = example_model()
            return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def digits(rng: np.random.Generator) -> tuple[Any, Any]:
            b = torch.from_numpy(rng.integers(0, x.shape[0], batch))
            return x[b], y[b]

        return TrainLoop(EXAMPLE_MODEL, make_cnn, digits)
    if kind == "resnet50":
        from plinius.lab.bench.resnet import resnet50_sgd

        px = RESNET50_PIXELS

        def images(rng: np.random.Generator) -> tuple[Any, Any]:
            xs = rng.standard_normal((batch, 3, px, px), dtype=np.float32)
            return torch.from_numpy(xs), torch.from_numpy(rng.integers(0, 1000, batch))

        label = f"{RESNET50_MODEL}, batch {batch} of {px}x{px} px"
        return TrainLoop(label, resnet50_sgd, images)
    raise ConfigError(f"unknown training loop {kind!r}: choose one of {', '.join(LOOPS)}")


def torch_overhead(
    sync_backend: str,
    async_backend: str,
    key_file: str | Path,
    *,
    loop: str = "cnn",
    every: int = 1,
    blocks: int = 7,
    steps_per_block: int = 20,
    batch: int = 64,
    threads: int | None = 1,
    seed: int = 0,
    platform: Platform | None = None,
) -> dict[str, Any]:
    """Seconds per training step of ``loop`` (:func:`train_loop`) without mirroring, with a
    synchronous mirror every ``every`` steps and with an asynchronous one, in interleaved
    blocks (order rotated per block). An async block ends by draining its pending seal,
    inside the timing. ``threads``: torch's intra-op threads (None: every core this process
    may use, so the background seal competes with training for them, as it does for users).

    Returns ``{"samples": {"none": [...], "sync": [...], "async": [...]}, ...}``: one
    seconds-per-step figure per block, for :mod:`plinius.lab.bench.stats` intervals.
    """
    import torch

    from plinius.lab.bench.limits import cores
    from plinius.torch import TorchMirror

    if every < 1 or blocks < 1 or steps_per_block < 1:
        raise ConfigError("every, blocks and steps_per_block must be >= 1")
    threads = cores() if threads is None else threads
    torch.manual_seed(seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    train = train_loop(loop, batch, seed)
    rng = np.random.default_rng(seed)
    loss_fn = torch.nn.CrossEntropyLoss()

    @dataclass
    class Mode:
        name: str
        model: Any
        optimizer: Any
        mirror: Any  # TorchMirror | None
        done: int = 0

    modes = []
    for name, spec in (("none", None), ("sync", sync_backend), ("async", async_backend)):
        model, opt = train.make()
        tm = None
        if spec is not None:
            tm = TorchMirror(
                model,
                opt,
                backend=spec,
                key_file=str(key_file),
                every=every,
                asynchronous=name == "async",
                platform=platform,
            )
            tm.restore()  # a leftover mirror of an earlier run is picked up, not an error
        modes.append(Mode(name, model, opt, tm))

    def block(m: Mode) -> float:
        data = [train.batch(rng) for _ in range(steps_per_block)]
        t0 = time.perf_counter()
        for bx, by in data:
            m.optimizer.zero_grad(set_to_none=True)
            loss_fn(m.model(bx), by).backward()
            m.optimizer.step()
            m.done += 1
            if m.mirror is not None:
                m.mirror.step(m.done)
        if m.mirror is not None and m.name == "async":
            m.mirror.flush()
        return (time.perf_counter() - t0) / steps_per_block

    samples: dict[str, list[float]] = {m.name: [] for m in modes}
    runs_on = modes[1].mirror.backend.describe()
    try:
        for m in modes:  # warm-up: first allocations, first seal, first pool growth
            block(m)
        for r in range(blocks):
            k = r % len(modes)  # rotated as the contender rounds are
            for m in [*modes[k:], *modes[:k]]:
                samples[m.name].append(block(m))
    finally:
        for m in modes:
            if m.mirror is not None:
                m.mirror.close()
        torch.set_num_threads(before)
    return {
        "model": train.label,
        "loop": loop,
        "every": every,
        "batch": batch,
        "threads": threads,
        "steps_per_block": steps_per_block,
        "backends": {"sync": sync_backend, "async": async_backend},
        "durability": runs_on.durability,
        "emulated": runs_on.emulated,
        "samples": samples,
    }


def overhead_row(
    blocks: int, steps_per_block: int = 20, *, loop: str = "cnn", every: int = 1
) -> dict[str, Any]:
    """An ``overhead`` section row of the PyTorch adapter: :func:`torch_overhead` of ``loop``
    on ``romulus`` in RAM with a throw-away key and simulated CPU (removed after); "not run"
    and why without torch. The example CNN runs on one thread, ResNet-50 on every core."""
    label = EXAMPLE_MODEL if loop == "cnn" else RESNET50_MODEL
    facts = {"loop": loop, "every": every}
    why = torch_unavailable()
    if why:
        return {**MirrorOverhead(label, "romulus", 0.0, 0.0, 0.0, not_run=why).as_dict(), **facts}
    from plinius.core.crypto import generate_key, write_key_file
    from plinius.lab.plan import default_spec, root_dir

    with tempfile.TemporaryDirectory(prefix="plinius-torch-", dir=root_dir("shm")) as tmp:
        d = Path(tmp)
        write_key_file(d / "owner.key", generate_key())
        platform = SimulatedPlatform(d / "platform", state_dir=d / "state")
        for m in ("sync", "async"):
            (d / m).mkdir()
        got = torch_overhead(
            default_spec("romulus", d / "sync"),
            default_spec("romulus", d / "async"),
            d / "owner.key",
            loop=loop,
            every=every,
            blocks=blocks,
            steps_per_block=steps_per_block,
            batch=64 if loop == "cnn" else RESNET50_BATCH,
            threads=1 if loop == "cnn" else None,
            platform=platform,
        )
    row = from_samples(
        got["model"],
        "romulus",
        got["samples"],
        instance="romulus (TorchMirror)",
        durability=got["durability"],
        emulated=got["emulated"],
    )
    return {**row.as_dict(), **facts, "threads": got["threads"]}
