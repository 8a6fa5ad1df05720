"""Issue 25: the frictions of porting an epoch-shaped PyTorch loop to TorchMirror, one test each:
epoch loops (``epochs``/``batches``/``position``), tensors and arrays in ``extra_state`` (sealed
records, restored in place or replaced), ``fresh=True`` and errors that name it, mismatch
messages that say what differs, the tail mirrored on close, the determinism check, and the
cached record layout and binary RNG records of the torch state (old mirrors still restore)."""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_runner import run_cli
from needs import import_torch

torch = import_torch()

from plinius.backends.registry import open_backend  # noqa: E402
from plinius.core.crypto import generate_key, make_engine, read_key_file, write_key_file  # noqa: E402
from plinius.core.errors import ConfigError, ModelMismatchError, RollbackError  # noqa: E402
from plinius.format.mirror import MirrorStore, Record  # noqa: E402
from plinius.torch import TorchMirror, TorchState  # noqa: E402
from plinius.torch.codec import encode  # noqa: E402
from plinius.torch.state import EXTRA, RNG  # noqa: E402

EPOCHS, PER = 3, 4


@pytest.fixture
def key(tmp_path: Path) -> str:
    path = tmp_path / "owner.key"
    write_key_file(path, generate_key())
    return str(path)


@pytest.fixture
def spec(shm_dir: Path) -> str:
    return f"tmpfs:{shm_dir / 'm'}"


@pytest.fixture(autouse=True)
def deterministic() -> Iterator[None]:
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


class LM(torch.nn.Module):  # type: ignore[misc]
    """A tiny LSTM language model with dropout (torch's RNG) and carried hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 6)
        self.rnn = torch.nn.LSTM(6, 5)
        self.drop = torch.nn.Dropout(0.3)
        self.out = torch.nn.Linear(5, 10)

    def forward(self, x: Any, hidden: Any) -> Any:
        y, hidden = self.rnn(self.drop(self.emb(x)), hidden)
        return self.out(self.drop(y)).view(-1, 10), hidden


def _new(seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = LM()
    return model, torch.optim.AdamW(model.parameters(), lr=0.05), {}


class Stop(Exception):
    """Where a run is cut short (the loop's body raises: nothing more is mirrored)."""


def _zero_hidden() -> tuple[Any, Any]:
    return torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)


def run(
    spec: str,
    key: str,
    stop: tuple[int, int, str] | None = None,
    log: list[str] | None = None,
    asynchronous: bool = False,
) -> list[str]:
    """An epoch loop (carried hidden state, evaluation and LR anneal at each epoch's end);
    ``stop=(epoch, batch, where)`` raises in that batch ("batch") or in that epoch's
    evaluation ("eval"). The lines it logged (losses as repr: bit for bit), also into ``log``."""
    model, opt, loop = _new()
    loop.update(hidden=_zero_hidden(), best=None, seen=np.zeros(3, np.int64))
    data = torch.arange(EPOCHS * PER * 6).remainder(10).view(-1, 3, 2)
    log = [] if log is None else log
    with TorchMirror(
        model, opt, backend=spec, key_file=key, extra_state=loop, asynchronous=asynchronous
    ) as mirror:
        for epoch in mirror.epochs(EPOCHS, PER):
            model.train()
            for batch in mirror.batches():
                if stop == (epoch, batch, "batch"):
                    raise Stop
                x = data[(epoch * PER + batch) % len(data)]
                out, hidden = model(x, tuple(h.detach() for h in loop["hidden"]))
                loss = torch.nn.functional.cross_entropy(out, x.reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
                loop["hidden"] = hidden
                loop["seen"] += 1
                log.append(f"{epoch}.{batch} {loss.item()!r}")
            model.eval()
            with torch.no_grad():
                val = torch.nn.functional.cross_entropy(*_eval(model, data[0]))
            if stop == (epoch, PER, "eval"):
                raise Stop
            if loop["best"] is None or val.item() < loop["best"]:
                loop["best"] = val.item()
            else:
                for g in opt.param_groups:
                    g["lr"] /= 4
            loop["hidden"] = _zero_hidden()
            log.append(f"end {epoch} {val.item()!r} {opt.param_groups[0]['lr']!r}")
    log.append(f"final {[t.sum().item() for t in model.state_dict().values()]!r}")
    log.append(f"seen {loop['seen'].tolist()}")
    return log


def _eval(model: Any, x: Any) -> tuple[Any, Any]:
    out, _ = model(x, _zero_hidden())
    return out, x.reshape(-1)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_epoch_loop_cut_anywhere_resumes_exactly(
    shm_dir: Path, key: str, asynchronous: bool
) -> None:
    """Cut in a batch or in an epoch's evaluation, a resumed run logs what the uninterrupted
    one logs from where the mirror stood: the end of an epoch is redone with its last batch."""
    want = run(f"tmpfs:{shm_dir / 'ref'}", key)
    spec = f"tmpfs:{shm_dir / 'cut'}"
    got: list[str] = []
    for stop in [(0, 2, "batch"), (1, PER, "eval"), (2, 0, "batch"), None]:
        try:
            run(spec, key, stop, got, asynchronous)
        except Stop:
            pass
        else:
            break
    # every line is the uninterrupted run's, in its order, and only one was done twice: epoch
    # 1's last batch, redone with the end of epoch 1 the cut in its evaluation lost
    assert list(dict.fromkeys(got)) == want
    last = next(line for line in want if line.startswith(f"1.{PER - 1} "))
    assert [line for line in got if got.count(line) > 1] == [last, last]


def test_position_and_misuse(spec: str, key: str) -> None:
    model, opt, _ = _new()
    with TorchMirror(model, opt, backend=spec, key_file=key) as mirror:
        assert mirror.restore() == 0 and mirror.position(PER) == (0, 0)
        for it in range(1, 7):
            mirror.step(it)
    model, opt, _ = _new()
    with TorchMirror(model, opt, backend=spec, key_file=key) as mirror:
        assert mirror.restore() == 6 and mirror.position(PER) == (1, 2)
        with pytest.raises(ConfigError, match=r"inside a loop over mirror.epochs\(\)"):
            next(mirror.batches())
        epochs = mirror.epochs(EPOCHS, PER)
        assert next(epochs) == 1
        assert list(mirror.batches()) == [2, 3]  # the batches left in the resumed epoch
        assert next(epochs) == 2
        next(mirror.batches())  # leave epoch 2 after one of its batches
        with pytest.raises(ConfigError, match="epoch 2 ended at batch 0 of 4"):
            next(epochs)
        with pytest.raises(ConfigError, match="batches_per_epoch=0"):
            mirror.position(0)


def test_extra_state_odd_arrays_are_refused_or_replaced(spec: str, key: str) -> None:
    """An object array is refused at the save in one line (never pickled); an expanded tensor
    standing at a restored key (many elements, one place) is replaced, not written into."""
    with (
        pytest.raises(ConfigError, match="dtype object"),
        TorchMirror(
            torch.nn.Linear(2, 2), backend=spec, key_file=key,
            extra_state={"x": np.array([object()], dtype=object)},
        ) as mirror,
    ):  # fmt: skip
        mirror.mirror()
    src = torch.arange(5.0).expand(3, 5).clone()
    with TorchMirror(torch.nn.Linear(2, 2), backend=spec, key_file=key, extra_state={"x": src},
                     fresh=True) as mirror:  # fmt: skip
        mirror.step(1)
    have = torch.zeros(5).expand(3, 5)
    after: dict[str, Any] = {"x": have}
    with TorchMirror(
        torch.nn.Linear(2, 2), backend=spec, key_file=key, extra_state=after
    ) as mirror:
        mirror.restore()
    assert torch.equal(after["x"], src) and after["x"] is not have


def test_extra_state_tensors_are_sealed_records(spec: str, key: str, shm_dir: Path) -> None:
    """Tensors and arrays in extra_state (any size, nested, bf16, non-contiguous) become
    records, not JSON; restored into the same objects when dtype and shape match, else new."""
    model, opt, _ = _new()
    marker = np.full(4096, 0x5A17C0DE, np.int64)  # 32 KiB: too big for the manifest's JSON
    loop: dict[str, Any] = {
        "hidden": (torch.full((1, 2, 5), 0.25), torch.arange(10.0).view(2, 5).t()),
        "avg": torch.tensor(1.5, dtype=torch.bfloat16),
        "marker": marker,
        "nested": {"xs": [np.arange(3, dtype=np.float32)], "n": 3},
    }
    st = TorchState(model, opt, extra_state=loop)
    doc = st.training_state()
    names = {r[1] for r in doc["layout"] if r[0] == EXTRA}
    assert names == {
        "extra_state.hidden[0]", "extra_state.hidden[1]", "extra_state.avg",
        "extra_state.marker", "extra_state.nested.xs[0]",
    }  # fmt: skip
    assert doc["extra"]["marker"] == {"__record__": "extra_state.marker"}
    assert doc["extra"]["nested"]["n"] == 3
    with TorchMirror(model, opt, backend=spec, key_file=key, extra_state=loop) as mirror:
        mirror.step(1)
    blob = (shm_dir / "m" / "mirror").read_bytes()
    assert marker.tobytes()[:64] not in blob  # sealed like the weights

    model, opt, _ = _new(seed=3)
    same = torch.zeros(1, 2, 5)
    wrong = np.zeros(5, np.int64)  # another shape: replaced
    after: dict[str, Any] = {"hidden": (same, None), "marker": wrong, "stale": 1}
    with TorchMirror(model, opt, backend=spec, key_file=key, extra_state=after) as mirror:
        assert mirror.restore() == 1
    assert set(after) == set(loop)  # the mirror's keys, the stale one gone
    assert after["hidden"][0] is same and torch.equal(same, loop["hidden"][0])  # in place
    assert torch.equal(after["hidden"][1], loop["hidden"][1])
    assert after["avg"].dtype == torch.bfloat16 and after["avg"].item() == 1.5
    assert after["marker"] is not wrong and np.array_equal(after["marker"], marker)
    assert after["marker"].dtype == np.int64
    assert np.array_equal(after["nested"]["xs"][0], np.arange(3, dtype=np.float32))


def test_fresh_starts_over_and_errors_name_it(spec: str, key: str, shm_dir: Path) -> None:
    model, opt, _ = _new()
    with TorchMirror(model, opt, backend=spec, key_file=key) as mirror:
        mirror.step(3)
    other = torch.nn.Linear(3, 3)  # another model: without fresh, refused
    with (
        pytest.raises(ModelMismatchError, match="fresh=True"),
        TorchMirror(other, backend=spec, key_file=key) as mirror,
    ):
        mirror.restore()
    before = other.weight.detach().clone()
    with TorchMirror(other, backend=spec, key_file=key, fresh=True) as mirror:
        assert mirror.restore() == 0 and mirror.position(2) == (0, 0)
        assert torch.equal(other.weight, before)  # nothing was read into the model
        mirror.step(1)
    with TorchMirror(other, backend=spec, key_file=key) as mirror:
        assert mirror.restore() == 1  # the new run's mirror, accepted
    with TorchMirror(other, backend=spec, key_file=key) as mirror:
        assert mirror.restore(fresh=True) == 0
    (shm_dir / "m" / "mirror").unlink()  # the platform recorded a mirror: a rollback
    with pytest.raises(RollbackError) as err, TorchMirror(other, backend=spec, key_file=key) as m:
        m.restore()
    assert "fresh=True" in str(err.value) and "--fresh" not in str(err.value)


def _mirror_of(spec: str, key: str, model: Any, opt: Any = None, sched: Any = None) -> None:
    with TorchMirror(model, opt, backend=spec, key_file=key, scheduler=sched) as mirror:
        mirror.step(1)


def _refusal(spec: str, key: str, model: Any, opt: Any = None, sched: Any = None) -> str:
    with (
        pytest.raises(ModelMismatchError) as err,
        TorchMirror(model, opt, backend=spec, key_file=key, scheduler=sched) as mirror,
    ):
        mirror.restore()
    return str(err.value)


def _mlp(width: int = 4, dtype: Any = None, names: tuple[str, str] = ("a", "b")) -> Any:
    torch.manual_seed(0)
    a, b = names
    layers = {a: torch.nn.Linear(3, width), "act": torch.nn.ReLU(), b: torch.nn.Linear(width, 2)}
    model = torch.nn.Sequential(torch.nn.ModuleDict(layers))
    return model.to(dtype) if dtype is not None else model


def test_mismatch_says_what_differs(spec: str, key: str) -> None:
    model = _mlp()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(sgd, 2)
    _mirror_of(spec, key, model, sgd, sched)
    m = _mlp()
    msg = _refusal(spec, key, m)  # optimizer and scheduler dropped
    assert "optimizer SGD -> none" in msg and "scheduler StepLR -> none" in msg
    assert "fresh=True" in msg and "--fresh" not in msg
    m = _mlp()
    adam = torch.optim.Adam(m.parameters())
    msg = _refusal(spec, key, m, adam, torch.optim.lr_scheduler.StepLR(adam, 2))
    assert "optimizer SGD -> Adam" in msg and "scheduler StepLR ->" not in msg
    m = _mlp(width=5)
    o = torch.optim.SGD(m.parameters(), lr=0.1)
    msg = _refusal(spec, key, m, o, torch.optim.lr_scheduler.StepLR(o, 2))
    assert "0.a.weight shape [4, 3] -> [5, 3]" in msg
    m = _mlp(dtype=torch.float64)
    o = torch.optim.SGD(m.parameters(), lr=0.1)
    assert "0.a.bias dtype float32 -> float64" in _refusal(
        spec, key, m, o, torch.optim.lr_scheduler.StepLR(o, 2)
    )
    m = _mlp(names=("a", "c"))
    o = torch.optim.SGD(m.parameters(), lr=0.1)
    msg = _refusal(spec, key, m, o, torch.optim.lr_scheduler.StepLR(o, 2))
    assert "tensors renamed: 0.b.weight -> 0.c.weight, 0.b.bias -> 0.c.bias" in msg, msg
    m = torch.nn.Sequential(torch.nn.Linear(3, 4))
    msg = _refusal(spec, key, m)
    assert "tensors in the mirror, not in this model: 0.a.weight" in msg, msg
    assert "modules" in msg and "torch.nn.modules.container.ModuleDict -> " in msg


def test_the_tail_is_mirrored_on_close(spec: str, key: str) -> None:
    """every=5, 7 steps: close() mirrors step 7; mirror_on_close=False leaves 5; leaving the
    block on an exception mirrors nothing more."""
    for on_close, fails, want in [(True, False, 7), (False, False, 5), (True, True, 5)]:
        model, opt, _ = _new()
        with (
            pytest.raises(Stop) if fails else contextlib.nullcontext(),
            TorchMirror(model, opt, backend=spec, key_file=key, every=5, fresh=True,
                        mirror_on_close=on_close) as mirror,
        ):  # fmt: skip
            for it in range(1, 8):
                mirror.step(it)
            if fails:
                raise Stop
        model, opt, _ = _new()
        with TorchMirror(model, opt, backend=spec, key_file=key, mirror_on_close=False) as m:
            assert m.restore() == want, (on_close, fails)
    model, opt, _ = _new()
    mirror = TorchMirror(model, opt, backend=spec, key_file=key, every=5, fresh=True)
    for it in range(1, 4):
        mirror.step(it)
    mirror.close()  # close() itself, not only the with block
    res = run_cli("verify", "--backend", spec, "--key-file", key)
    assert res.returncode == 0 and "iteration 3 " in res.stdout, res.stdout + res.stderr


def test_check_determinism_warns_in_one_line(spec: str, key: str) -> None:
    model, opt, _ = _new()
    threads = torch.get_num_threads()
    with TorchMirror(model, opt, backend=spec, key_file=key) as mirror:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert mirror.check_determinism() == []
        mirror.step(1)
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads + 1)
    try:
        model, opt, _ = _new()
        with TorchMirror(model, opt, backend=spec, key_file=key) as mirror:
            mirror.restore()
            with pytest.warns(RuntimeWarning) as got:
                found = mirror.check_determinism()
    finally:
        torch.set_num_threads(threads)
    assert len(got) == 1 and "\n" not in str(got[0].message)
    assert "torch.use_deterministic_algorithms(True) is not set" in found
    assert f"torch runs {threads + 1} threads, the mirror's run {threads}" in found


def test_records_are_cached_until_a_tensor_changes(key: str) -> None:
    """The record list is rebuilt when the optimizer makes or replaces a state tensor, never
    left pointing at memory the optimizer no longer uses; else reused as is."""
    model, opt, _ = _new()
    st = TorchState(model, opt)
    first = {n for _, n, _ in st.mirror_buffers()}
    assert not any(n.startswith("0.exp") for n in first)
    out, _ = model(torch.zeros(2, 2, dtype=torch.int64), _zero_hidden())
    out.sum().backward()
    opt.step()
    st.training_state()
    cached = st._cache
    bufs = {n: a for _, n, a in st.mirror_buffers()}
    assert "0.exp_avg" in bufs and bufs["0.exp_avg"].ctypes.data == (
        opt.state[model.emb.weight]["exp_avg"].data_ptr()
    )
    st.training_state()
    assert st._cache is cached  # nothing changed: nothing rebuilt
    state = opt.state[model.emb.weight]
    state["exp_avg"] = torch.full_like(state["exp_avg"], 7.0)
    st.training_state()  # the enclave takes the manifest, then the buffers of the same moment
    bufs = {n: a for _, n, a in st.mirror_buffers()}
    assert (bufs["0.exp_avg"] == 7.0).all() and st._cache is not cached


def test_rng_states_are_records_and_old_json_mirrors_restore(shm_dir: Path, key: str) -> None:
    """Python's and NumPy's RNG states are uint32 records now; a mirror of manifest format 1
    (both as JSON in the manifest, the records absent) still restores them."""
    model, opt, _ = _new()
    st = TorchState(model, opt)
    random.seed(5)
    np.random.seed(6)
    want = (random.random(), np.random.random())
    random.seed(5)
    np.random.seed(6)
    doc = st.training_state()
    rows = {r[1]: r for r in doc["layout"] if r[0] == RNG}
    assert rows["python"][2:4] == ["torch.uint32", [625]]
    assert rows["numpy"][2:4] == ["torch.uint32", [624]]
    assert "numpy" in doc["rng"] and "key" not in str(doc["rng"]["numpy"])
    old = dict(doc, format=1, rng={
        "python": encode(random.getstate(), "python RNG"),
        "numpy": encode(np.random.get_state(legacy=False), "numpy RNG"),
    })  # fmt: skip
    old["layout"] = [r for r in doc["layout"] if r[1] not in ("python", "numpy")]
    old.pop("model_doc")
    records = [Record(*b) for b in st.mirror_buffers() if b[1] not in ("python", "numpy")]
    with open_backend(f"tmpfs:{shm_dir / 'old'}") as backend:
        store = MirrorStore(backend, make_engine(read_key_file(key)), st.fingerprint())
        store.save(records, 1, 0, {"net": old})
        random.seed(0)
        np.random.seed(0)
        st.prepare_restore(old)
        got = store.load(into=st.restore_buffers())
        assert got is not None
        st.load_training_state(got.info.meta["net"])
    assert (random.random(), np.random.random()) == want


def test_a_mirror_copied_in_from_another_slot_is_not_described(shm_dir: Path, key: str) -> None:
    """The explanation comes only from the slot's own fresh mirror: another model's mirror of
    the same owner, copied in by the storage attacker, leaks none of its tensor names."""
    other, mine = shm_dir / "other", shm_dir / "mine"
    _mirror_of(f"tmpfs:{other}", key, _mlp(names=("secret_encoder", "diagnosis_head")))
    _mirror_of(f"tmpfs:{mine}", key, torch.nn.Linear(2, 2))
    (mine / "mirror").write_bytes((other / "mirror").read_bytes())
    msg = _refusal(f"tmpfs:{mine}", key, torch.nn.Linear(2, 2))
    assert "secret_encoder" not in msg and "diagnosis_head" not in msg, msg
    assert "fingerprints differ" in msg and "fresh=True" in msg


def test_old_mirrors_mismatch_is_described_from_their_layout() -> None:
    """A mirror made before the description was kept: what differs is read from its layout,
    aliases, optimizer groups and module list."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    doc = TorchState(a, torch.optim.SGD(a.parameters(), lr=0.1)).training_state()
    old = {k: v for k, v in doc.items() if k != "model_doc"}
    old["modules"] = [[n, f"{type(m).__module__}.{type(m).__qualname__}"]
                      for n, m in a.named_modules()]  # fmt: skip
    b = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh())
    said = TorchState(b).describe_mismatch(old)
    assert "0.weight shape [4, 3] -> [5, 3]" in said
    assert "tensors in the mirror, not in this model: 1.weight, 1.bias" in said
    assert "optimizer (one) -> none" in said
    assert "1: torch.nn.modules.linear.Linear -> torch.nn.modules.activation.Tanh" in said


def test_cli_flags_are_named_as_python_arguments() -> None:
    from plinius.torch.mirror import python_spelling

    said = python_spelling(
        "more than --replica-max-lag 2: refusing the rollback (accept exactly this loss with "
        "--accept-replica-loss 3, or start over with --fresh); (accepted with "
        "--accept-replica-loss)"
    )
    assert said == (
        "more than replica_max_lag=2: refusing the rollback (accept exactly this loss with "
        "accept_replica_loss=3, or start over with fresh=True); (accepted with "
        "accept_replica_loss)"
    )
