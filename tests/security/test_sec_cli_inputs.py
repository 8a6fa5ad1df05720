"""The CLI fails closed on bad input: one line naming the input, exit 2, no traceback, no hang.

Every case runs the real ``plinius`` in a fresh process with a timeout (a hang fails the test),
and checks that stderr is exactly one line carrying a word that names the input. Loader-level
checks (NUL bytes cannot reach a real argv) complete the picture.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import ConfigError
from plinius.lab.bench.suite import section_names
from plinius.lab.spot.trace import load_trace
from plinius.nn.cfg import parse_cfg
from plinius.nn.zoo import cfg_text

from .conftest import CliRunner, World, _run, assert_refused

TIMEOUT = 30.0
LONG = "n" * 300  # one path component over NAME_MAX (255 bytes)
SPARSE = 4 << 30  # a 4 GiB sparse file: costs no disk, would cost 4 GiB to read


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One victim for the whole module: the owner's key and encrypted data are made once."""
    root = tmp_path_factory.mktemp("cli-inputs")
    key = root / "owner.key"
    write_key_file(key, generate_key())
    shm = Path(tempfile.mkdtemp(prefix="plinius-test-", dir="/dev/shm"))
    w = World(root, key, root / "data.pld", root / "state", root / "platform", shm)
    try:
        res = _run("owner", "encrypt-data", "--key-file", str(key), "--out", str(w.data), env=w.env)
        assert res.returncode == 0, res.stderr
        yield w
    finally:
        shutil.rmtree(shm, ignore_errors=True)


@pytest.fixture
def world(shared_world: World, tmp_path: Path) -> World:
    """The shared victim with a fresh scratch root per test (outputs never collide)."""
    return dataclasses.replace(shared_world, root=tmp_path)


def refused(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """exit 2, no traceback, the needles, and exactly one line on stderr."""
    assert_refused(res, *needles)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A FIFO, a directory, a socket, and two devices: where plinius expects a file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "adir"
    directory.mkdir()
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        yield {
            "fifo": fifo,
            "directory": directory,
            "socket": sock_path,
            "zero": Path("/dev/zero"),
            "null": Path("/dev/null"),
        }
    finally:
        sock.close()


@pytest.fixture
def sparse(tmp_path: Path) -> Path:
    p = tmp_path / "sparse.bin"
    with open(p, "wb") as f:
        f.truncate(SPARSE)
    return p


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot create files in (root ignores modes: use sysfs then)."""
    if os.geteuid() == 0:
        yield Path("/sys")
        return
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield d
    d.chmod(stat.S_IRWXU)


def _train(w: World, *extra: str, model: str = "tiny") -> list[str]:
    return [
        "train", "--model", model, "--backend", f"tmpfs:{w.shm / 'inst'}",
        "--key-file", str(w.key), "--data", str(w.data), "--iterations", "2", *extra,
    ]  # fmt: skip


def _where(w: World, what: str, path: str) -> list[str]:
    """A command that reads ``path`` as ``what`` first of all."""
    if what == "key file":
        return ["verify", "--backend", f"tmpfs:{w.shm / 'v'}", "--key-file", path]
    if what == "dataset":
        return _train(w, "--data", path)
    if what == "model cfg":
        return ["models", path]
    if what == "trace file":
        return ["spot", "--quick", "--trace", path, "--out", str(w.root / "spot-out")]
    if what == "bench results":
        return ["report", "--bench", path, "--out", str(w.root / "rep")]
    raise AssertionError(what)


READS = ["key file", "dataset", "model cfg", "trace file", "bench results"]


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket", "zero", "null"])
@pytest.mark.parametrize("what", READS)
def test_special_file_where_a_file_is_expected(
    world: World, run_cli: CliRunner, specials: dict[str, Path], what: str, kind: str
) -> None:
    res = run_cli(*_where(world, what, str(specials[kind])), env=world.env, timeout=TIMEOUT)
    # a socket cannot even be opened (ENXIO): fsutil names the input and the reason
    word = {"fifo": "FIFO", "directory": "directory", "socket": "cannot open"}.get(kind, "device")
    refused(res, what, word)


@pytest.mark.parametrize("what", READS)
def test_sparse_multi_gib_file_is_not_read(
    world: World, run_cli: CliRunner, sparse: Path, what: str
) -> None:
    args = _where(world, what, str(sparse))
    res = run_cli(*args, env=world.env, timeout=TIMEOUT)
    if what == "dataset":
        # a dataset may be big: it is read sample by sample and refused by its magic
        refused(res, "not a plinius encrypted dataset")
    else:
        refused(res, what, "GiB" if what == "key file" else "B, more than")


@pytest.mark.parametrize(
    ("flag", "what"),
    [
        ("--key-file", "key file"),
        ("--data", "dataset"),
        ("--model", "model cfg"),
        ("--log", "loss log"),
        ("--report", "run report"),
    ],
)
def test_train_path_over_255_bytes(world: World, run_cli: CliRunner, flag: str, what: str) -> None:
    path = str(world.root / (LONG + (".cfg" if flag == "--model" else "")))
    args = _train(world, flag, path) if flag != "--model" else _train(world, model=path)
    res = run_cli(*args, env=world.env, timeout=TIMEOUT)
    refused(res, what, "255 bytes")


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["spot", "--quick", "--trace", "{long}"], "trace file"),
        (["report", "--bench", "{long}"], "bench results"),
        (["report", "--asv", "{long}"], "asv results directory"),
        (["models", "{long}"], "model cfg"),
        (["export", "--backend", "tmpfs:{root}/b", "--key-file", "{key}", "--weights", "{long}"],
         "weights file"),
        (["owner", "encrypt-data", "--key-file", "{key}", "--out", "{long}"], "encrypted dataset"),
        (["verify", "--backend", "tmpfs:{long}", "--key-file", "{key}"], "backend tmpfs location"),
    ],
)  # fmt: skip
def test_other_paths_over_255_bytes(
    world: World, run_cli: CliRunner, args: list[str], what: str
) -> None:
    subst = {"long": str(world.root / LONG), "root": str(world.root), "key": str(world.key)}
    res = run_cli(*(a.format(**subst) for a in args), env=world.env, timeout=TIMEOUT)
    refused(res, what, "255 bytes")


def test_nul_bytes_in_paths_are_refused_by_every_loader(tmp_path: Path) -> None:
    """A real argv cannot hold NUL; library callers can, and must not see it truncated."""
    from plinius.apps.trainer import LossLog
    from plinius.cli.common import input_file, output_dir, output_file, read_json

    bad = str(tmp_path / "a\0b")
    for call in (
        lambda: load_trace(bad),
        lambda: parse_cfg(bad + ".cfg"),
        lambda: cfg_text(bad + ".cfg"),
        lambda: read_json(bad, "bench results"),
        lambda: input_file(bad, "key file"),
        lambda: output_file(bad, "weights file"),
        lambda: output_dir(bad),
        lambda: LossLog(bad),
    ):
        with pytest.raises(ConfigError, match="NUL"):
            call()


NET = "[net]\nbatch={batch}\nheight=28\nwidth=28\nchannels=1\n"
CONV = "[convolutional]\nfilters={filters}\nsize={size}\nstride=1\npad=1\nactivation=leaky\n"


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        (b"\xff\xfe[net]\nbatch=1\n", "not UTF-8"),
        ((NET.format(batch=8) + CONV.format(filters=10**9, size=3) + "[softmax]\n"), "GiB"),
        ((NET.format(batch=8) + CONV.format(filters=8, size=10**5) + "[softmax]\n"), "GiB"),
        ((NET.format(batch=10**9) + CONV.format(filters=8, size=3) + "[softmax]\n"), "GiB"),
    ],
    ids=["non-utf8", "huge-filters", "huge-size", "huge-batch"],
)
def test_cfg_content_fails_before_allocating(
    world: World, run_cli: CliRunner, cfg: str | bytes, needle: str
) -> None:
    p = world.root / "m.cfg"
    p.write_bytes(cfg if isinstance(cfg, bytes) else cfg.encode())
    res = run_cli(
        "owner", "provision", "--model", str(p), "--key-file", str(world.key),
        env=world.env, timeout=TIMEOUT,
    )  # fmt: skip
    refused(res, "m.cfg", needle)


def test_huge_batch_flag_fails_before_allocating(world: World, run_cli: CliRunner) -> None:
    res = run_cli(*_train(world, "--batch", "1000000000"), env=world.env, timeout=TIMEOUT)
    refused(res, "mini-batch 1000000000", "GiB", "more than")


@pytest.mark.parametrize(
    "args",
    [
        ["--seed", "-1"],
        ["--seed", "99999999999999999999"],
        ["--iterations", "-1"],
        ["--iterations", "0"],
        ["--iterations", "99999999999999999999"],
        ["--mirror-every", "0"],
        ["--batch", "0"],
        ["--batch", "-3"],
        ["--crash-at", "0"],
        ["--iterations", ""],
    ],
)
def test_train_numbers_out_of_range(world: World, run_cli: CliRunner, args: list[str]) -> None:
    res = run_cli(*_train(world, *args), env=world.env, timeout=TIMEOUT)
    refused(res, args[0])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["crash-test", "--quick", "--kills", "-1"], "--kills"),
        (["crash-test", "--quick", "--iterations", "0"], "--iterations"),
        (["crash-test", "--quick", "--kills", "1000"], "--kills"),
        (["spot", "--quick", "--slot-seconds", "0"], "--slot-seconds"),
        (["spot", "--quick", "--slot-seconds", "-1"], "--slot-seconds"),
        (["spot", "--quick", "--slot-seconds", "nan"], "--slot-seconds"),
        (["spot", "--quick", "--bid", "nan"], "--bid"),
        (["spot", "--quick", "--bid", "inf"], "--bid"),
        (["spot", "--quick", "--bid", "-1"], "--bid"),
        (["spot", "--quick", "--iterations", "0"], "--iterations"),
        (["spot", "--quick", "--window", "0"], "--window"),
        (["spot", "--quick", "--start", "-1"], "--start"),
    ],
)
def test_experiment_numbers_out_of_range(
    world: World, run_cli: CliRunner, args: list[str], needle: str
) -> None:
    out = world.root / "exp-out"
    res = run_cli(*args, "--out", str(out), env=world.env, timeout=TIMEOUT)
    refused(res, needle)
    assert not (out / "results.json").exists()


def test_owner_seed_out_of_range(world: World, run_cli: CliRunner) -> None:
    res = run_cli(
        "owner", "encrypt-data", "--key-file", str(world.key), "--out", str(world.root / "x.pld"),
        "--seed", "-1", env=world.env, timeout=TIMEOUT,
    )  # fmt: skip
    refused(res, "--seed")


def test_output_paths(world: World, run_cli: CliRunner, unwritable: Path) -> None:
    victim = world.root / "keep.weights"
    victim.write_bytes(b"precious")
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (_train(world, "--log", "/dev/full"), ("loss log", "/dev/full")),
        (_train(world, "--log", str(world.root / "missing" / "l.csv")), ("loss log", "exist")),
        (_train(world, "--log", str(unwritable / "l.csv")), ("loss log",)),
        (_train(world, "--report", str(world.root / "missing" / "r.json")), ("run report",)),
        (_train(world, "--report", str(unwritable / "r.json")), ("run report",)),
        (
            ["export", "--backend", f"tmpfs:{world.shm / 'e'}", "--key-file", str(world.key),
             "--weights", str(world.root / "missing" / "m.weights")],
            ("weights file", "exist"),
        ),
        (
            ["export", "--backend", f"tmpfs:{world.shm / 'e'}", "--key-file", str(world.root),
             "--weights", str(victim)],
            ("key file", "directory"),
        ),
        (
            ["report", "--bench", str(world.root / "none.json"), "--out", str(unwritable / "r")],
            ("none.json",),
        ),
        (["spot", "--quick", "--out", str(unwritable / "s")], ("output directory",)),
        (["bench", "--quick", "--only", "save", "--out", str(victim)], ("output directory",)),
    ]  # fmt: skip
    for args, needles in cases:
        res = run_cli(*args, env=world.env, timeout=TIMEOUT)
        refused(res, *needles)
    assert victim.read_bytes() == b"precious"


BAD_TRACES = {
    "inf-price": ("0.1,0\ninf,1\n", "price"),
    "nan-price": ("0.1,0\nnan,1\n", "price"),
    "huge-price": ("1e300,0\n0.1,1\n", "price"),
    "negative-price": ("0.1,0\n-0.5,1\n", "price"),
    "years-csv": ("0.1,0\n0.1,100000000000\n", "slots"),
    "inf-slot": ("0.1,0\n0.1,inf\n", "slot"),
    "unsorted-csv": ("0.1,5\n0.1,3\n", "slots must increase"),
    "duplicate-csv": ("0.1,5\n0.1,5\n", "slots must increase"),
    "empty": ("", "empty"),
    "garbage": ("\x01garbage line\n", "price,slot"),
    "no-rows": ("price,slot\n", "no price rows"),
    "years-json": (
        json.dumps(
            [
                {"Timestamp": "2020-01-01T00:00:00Z", "SpotPrice": "0.1"},
                {"Timestamp": "2024-01-01T00:00:00Z", "SpotPrice": "0.1"},
            ]
        ),
        "slots",
    ),
    "duplicate-json": (
        json.dumps(
            [
                {"Timestamp": "2020-01-01T00:00:00Z", "SpotPrice": "0.1"},
                {"Timestamp": "2020-01-01T00:00:00Z", "SpotPrice": "0.2"},
            ]
        ),
        "twice",
    ),
    "nan-json": (json.dumps([{"Timestamp": "2020-01-01T00:00:00Z", "SpotPrice": "NaN"}]), "price"),
    "json-number": ("[1]", "Timestamp"),
    "json-object": ('{"x": 1}', "unknown trace format"),
}


@pytest.mark.parametrize("name", sorted(BAD_TRACES))
def test_bad_spot_trace(world: World, run_cli: CliRunner, name: str) -> None:
    text, needle = BAD_TRACES[name]
    p = world.root / "trace.csv"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_trace(p)
    res = run_cli(
        "spot", "--quick", "--trace", str(p), "--out", str(world.root / "s"),
        env=world.env, timeout=TIMEOUT,
    )  # fmt: skip
    refused(res, "trace", needle)


BAD_BENCH = {
    "list": ("[1, 2]", "top level"),
    "number": ("42", "top level"),
    "empty": ("", "empty"),
    "invalid": ("{bad", "not valid JSON"),
    "not-utf8": ("\udcff", "UTF-8"),
    "wrong-schema": ('{"schema": "other/1"}', "schema"),
    "missing-keys": ('{"schema": "plinius-bench/1"}', "parameters"),
    "wrong-types": (
        json.dumps(
            {
                "schema": "plinius-bench/1",
                "parameters": {"sizes_mb": [1], "repeats": 1, "engine": "x"},
                "provenance": {},
                "backends": {},
                "results": [{"backend": "ssd", "model_mb": "ten"}],
            }
        ),
        "results[0]",
    ),
    "results-not-list": (
        json.dumps(
            {
                "schema": "plinius-bench/1",
                "parameters": {"sizes_mb": [1], "repeats": 1, "engine": "x"},
                "provenance": {"cpu": "fast"},
                "backends": {},
            }
        ),
        "provenance.cpu",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_BENCH))
def test_bad_bench_results(world: World, run_cli: CliRunner, name: str) -> None:
    text, needle = BAD_BENCH[name]
    p = world.root / "results.json"
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    out = world.root / "rep"
    out.mkdir()
    (out / "report.md").write_text("victim")
    res = run_cli("report", "--bench", str(p), "--out", str(out), env=world.env, timeout=TIMEOUT)
    refused(res, "results", needle)
    assert (out / "report.md").read_text() == "victim"


@pytest.mark.parametrize(
    "content",
    ["[1]", "{bad", "", '{"version": 2, "result_columns": 3, "results": []}', "FIFO", "DIR-FIFO"],
)
def test_bad_asv_results(world: World, run_cli: CliRunner, content: str) -> None:
    d = world.root / "asv" / "machine-a"
    d.mkdir(parents=True)
    target = str(world.root / "asv")
    needles: tuple[str, ...] = ("asv results", "abc-env.json")
    if content == "FIFO":  # a FIFO named like a result file is skipped, never opened blocking
        os.mkfifo(d / "abc-env.json")
    elif content == "DIR-FIFO":  # --asv itself a FIFO
        os.mkfifo(world.root / "q")
        target, needles = str(world.root / "q"), ("not a directory",)
    else:
        (d / "abc-env.json").write_text(content)
    res = run_cli(
        "report", "--asv", target, "--out", str(world.root / "r"), env=world.env, timeout=TIMEOUT
    )
    refused(res, *needles)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["fio", "--threads", "0"], "--threads"),
        (["fio", "--threads", "a,b"], "--threads"),
        (["fio", "--threads", "100000"], "--threads"),
        (["fio", "--size", "abc"], "--size"),
        (["fio", "--size", "9" * 400], "--size"),
        (["fio", "--model-size", "-1"], "--model-size"),
        (["fio", "--runs", "0"], "--runs"),
        (["fio", "--runtime", "-1"], "--runtime"),
        (["fio", "--jobs", ""], "job set"),
        (["fio", "--jobs", "nope"], "job set"),
        (["fio", "--backends", ","], "--backends"),
        (["fio", "--jobs-dir", "/dev/null"], "--jobs-dir"),
        (["bench", "--backends", ","], "--backends"),
        (["bench", "--backends", ""], "--backends"),
        (["bench", "--backends", "tmpfs,,ssd"], "--backends"),
        (["bench", "--sizes", "nan"], "--sizes"),
        (["bench", "--sizes", "1e30"], "--sizes"),
        (["bench", "--sizes", ""], "--sizes"),
        (["bench", "--sizes", "a,b"], "--sizes"),
        (["bench", "--only", ","], "--only"),
        (["bench", "--only", ""], "--only"),
        (["bench", "--only", "nope"], "--only"),
        (["bench", "--skip", ",".join(section_names())], "no section"),
        (["bench", "--repeats", "0"], "--repeats"),
    ],
)
def test_fio_and_bench_options(
    world: World, run_cli: CliRunner, args: list[str], needle: str
) -> None:
    out = world.root / "o"
    res = run_cli(*args, "--out", str(out), env=world.env, timeout=TIMEOUT)
    refused(res, needle)
    assert not (out / "results.json").exists() and not (out / "fio.json").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["models", ""], "model name is empty"),
        (["models", "size-0"], "size"),
        (["train", "--model", "", "--backend", "tmpfs:{shm}/x", "--key-file", "{key}"], "model"),
        (["train", "--model", "tiny", "--backend", "", "--key-file", "{key}"], "backend spec"),
        (["train", "--model", "tiny", "--backend", "tmpfs:{shm}/x", "--key-file", ""], "key file"),
        (["verify", "--backend", "tmpfs:{shm}/x", "--key-file", ""], "key file"),
        (["keygen", "--out", "{root}/" + LONG], "255 bytes"),
        (["owner", "encrypt-data", "--key-file", "{key}", "--out", "{root}/d2.pld",
          "--source", LONG], "--source"),
        (["bench", "--backends", "ssd:/tmp/" + LONG, "--out", "{root}/b"], "255 bytes"),
        (["crash-test", "--backend", "tmpfs:/tmp/" + LONG, "--out", "{root}/c"], "255 bytes"),
    ],
)  # fmt: skip
def test_fuzzed_arguments(world: World, run_cli: CliRunner, args: list[str], needle: str) -> None:
    subst = {"shm": str(world.shm), "key": str(world.key), "root": str(world.root)}
    res = run_cli(*(a.format(**subst) for a in args), env=world.env, timeout=TIMEOUT)
    refused(res, needle)
