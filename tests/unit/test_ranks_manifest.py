"""The global manifest and the ranks' verdicts (plinius.enclave.ranks), without processes: a
manifest opens only under its key and fingerprint, whole, bounded before it is read; a rank's
part is held to the stamp and extent the manifest lists; one rank's refusal is every rank's."""

from __future__ import annotations

import json
import os

import pytest

from plinius.core.crypto import generate_key, make_engine
from plinius.core.errors import (
    FormatError,
    IntegrityError,
    PliniusError,
    RollbackError,
    WrongKeyError,
)
from plinius.enclave.counter import Extent, Stamp
from plinius.enclave.ranks import (
    MAX_GLOBAL,
    GlobalManifest,
    PartEntry,
    PartGuard,
    _report_problem,
    agree,
    global_size,
    open_global,
    seal_global,
)

FP = bytes(range(32))


def _manifest(world: int = 2, version: int = 3) -> GlobalManifest:
    run = os.urandom(16)
    parts = tuple(PartEntry(r, os.urandom(16), 1000 + r, 200, r % 2) for r in range(world))
    table = [[0, "w", "torch.float32", [4, 2], "shard", [[0, 0, 2], [1, 2, 2]], False]]
    return GlobalManifest(version, run, 40, world, parts, table)


def test_round_trip() -> None:
    eng = make_engine(generate_key())
    g = _manifest()
    assert open_global(eng, FP, seal_global(eng, FP, g), "g") == g


def test_every_byte_is_authenticated() -> None:
    eng = make_engine(generate_key())
    raw = seal_global(eng, FP, _manifest())
    for i in range(0, len(raw), 7):
        bad = bytearray(raw)
        bad[i] ^= 0x40
        with pytest.raises((IntegrityError, FormatError)):
            open_global(eng, FP, bytes(bad), "g")


def test_other_key_or_model_refused() -> None:
    eng = make_engine(generate_key())
    raw = seal_global(eng, FP, _manifest())
    with pytest.raises(WrongKeyError):
        open_global(make_engine(generate_key()), FP, raw, "g")
    with pytest.raises(IntegrityError):
        open_global(eng, bytes(32), raw, "g")


def test_cut_or_padded_refused() -> None:
    eng = make_engine(generate_key())
    raw = seal_global(eng, FP, _manifest())
    for bad in (raw[:-1], raw + b"\0", raw[:20]):
        with pytest.raises(FormatError):
            open_global(eng, FP, bad, "g")


def test_size_bounded_before_any_read() -> None:
    eng = make_engine(generate_key())
    raw = bytearray(seal_global(eng, FP, _manifest()))
    raw[44:48] = (MAX_GLOBAL + 1).to_bytes(4, "little")  # the header's body length
    with pytest.raises(FormatError, match="refused"):
        global_size(bytes(raw), "g")


class _Inner:
    """A freshness guard that accepts anything (the platform's own checks are tested apart)."""

    slot = "s"

    def admit(self, *args: object) -> bool:
        return True

    def __call__(self, info: object) -> None:
        pass


def test_part_held_to_the_listed_stamp_and_extent() -> None:
    g = _manifest()
    guard = PartGuard(_Inner(), g.stamp_of(1), g.extent_of(1), 1)  # type: ignore[arg-type]
    e = g.parts[1]
    assert guard.admit(g.run_id, g.version, e.save_id, e.size, e.manifest)
    with pytest.raises(RollbackError, match=r"rank 1: .*\(an older part replayed\)"):
        guard.admit(g.run_id, g.version - 1, os.urandom(16), e.size, e.manifest)
    with pytest.raises(RollbackError, match="swapped or mixed"):
        guard.admit(g.run_id, g.version, g.parts[0].save_id, e.size, e.manifest)
    with pytest.raises(RollbackError, match="different runs"):
        guard.admit(os.urandom(16), g.version, e.save_id, e.size, e.manifest)
    with pytest.raises(RollbackError):
        guard.admit(g.run_id, g.version, e.save_id, e.size + 1, e.manifest)


class _Link:
    """Every rank's verdict as given (what all_gather would hand each rank)."""

    def __init__(self, rank: int, verdicts: list[bytes]) -> None:
        self.rank, self.world, self.verdicts = rank, len(verdicts), verdicts

    def all_gather_bytes(self, data: bytes, limit: int) -> list[bytes]:
        out = list(self.verdicts)
        out[self.rank] = data
        return out

    def broadcast_bytes(self, data: bytes | None, limit: int, src: int = 0) -> bytes:
        raise AssertionError("not used")


def test_one_refusal_is_every_ranks() -> None:
    theirs = json.dumps(["RollbackError", "rank 1: its part holds an older save"]).encode()
    with pytest.raises(RollbackError, match="the restore refused: rank 1: its part holds"):
        agree(_Link(0, [b"ok", theirs]), None, "the restore")
    mine = RollbackError("rank 1: mine")
    with pytest.raises(RollbackError, match=r"^rank 1: mine$"):
        agree(_Link(1, [b"ok", b""]), mine, "the restore")
    agree(_Link(0, [b"ok", b"ok"]), None, "the restore")  # all agree: nothing raised


def test_unreadable_verdict_refuses() -> None:
    with pytest.raises(PliniusError, match="rank 1: sent an unreadable verdict"):
        agree(_Link(0, [b"ok", b"\xff garbage"]), None, "the restore")


def test_a_report_stops_the_save_saying_why() -> None:
    mine = {"version": 3, "run": "ab", "plan": "p", "extent": [1, 2], "blob": 0, "save": "00" * 16}
    assert _report_problem(dict(mine), mine) is None
    assert "failed" in str(_report_problem({**mine, "error": '["X", "disk full"]'}, mine))
    assert "at save 2" in str(_report_problem({**mine, "version": 2}, mine))
    assert "another tensor table" in str(_report_problem({**mine, "plan": "q"}, mine))
    assert "no part blob" in str(_report_problem({**mine, "blob": 2}, mine))
    assert "no extent" in str(_report_problem({**mine, "extent": None}, mine))
    assert "no save id" in str(_report_problem({**mine, "save": "zz"}, mine))


def test_stamp_and_extent_accessors() -> None:
    g = _manifest()
    assert g.stamp_of(0) == Stamp(g.run_id, g.version, g.parts[0].save_id)
    assert g.extent_of(1) == Extent(1001, 200)


def _sealed_doc(eng: object, doc: dict[str, object], version: int, run: bytes) -> bytes:
    """A body sealed under a header of our choosing (what only a key holder could write)."""
    import json as _json

    from plinius.core.crypto import OVERHEAD
    from plinius.enclave import ranks

    body = _json.dumps(doc).encode()
    header = ranks._GHEAD.pack(
        ranks.GLOBAL_MAGIC, 1, ranks._GHEAD.size, eng.key_id, version, run, len(body) + OVERHEAD
    )  # type: ignore[attr-defined]
    out = bytearray(len(header) + len(body) + OVERHEAD)
    out[: len(header)] = header
    eng.encrypt_into(ranks._aad(FP, header), body, memoryview(out)[len(header) :])  # type: ignore[attr-defined]
    return bytes(out)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: d.update(version=d["version"] + 1), IntegrityError),  # body ≠ header
        (lambda d: d["parts"].reverse(), FormatError),  # parts out of rank order
        (lambda d: d.update(world=3), FormatError),  # a world the parts do not fill
        (lambda d: d["parts"][0].__setitem__(4, 2), FormatError),  # no such part blob
        (lambda d: d.pop("table"), FormatError),  # malformed
    ],
)
def test_authentic_but_inconsistent_manifest_refused(change: object, error: type) -> None:
    eng = make_engine(generate_key())
    g = _manifest()
    doc = g.doc()
    change(doc)  # type: ignore[operator]
    with pytest.raises(error):
        open_global(eng, FP, _sealed_doc(eng, doc, g.version, g.run_id), "g")
