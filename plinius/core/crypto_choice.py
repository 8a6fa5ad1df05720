"""What ``auto`` means: for each call, the way measured fastest here at that size and op.

The speeds come from :mod:`plinius.core.crypto_ways` (a table measured on this machine, cached
per CPU and library versions). No size threshold is tuned in: on one CPU a wheel's OpenSSL on one
core beats the system libcrypto on all cores at every size, on another the pool wins from 32 MiB,
and a bundled OpenSSL 3.5 can beat both. Each call goes to the way that was fastest at the
measured size nearest to its total bytes (log scale), for its op (seal or open).

Two modes: ``sync`` (default) minimises wall seconds, because a synchronous mirror stops training
and may use every core; ``async`` minimises CPU seconds per byte, because an asynchronous mirror
shares the cores with the training that keeps running. ``$PLINIUS_CRYPTO_ENGINE`` still forces
one engine, ``$PLINIUS_LIBCRYPTO`` one libcrypto for ``openssl``, ``$PLINIUS_AEAD_THREADS`` its
thread count. :data:`last_choice` records what was chosen and why, for reports.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from plinius.core import crypto_ways
from plinius.core.crypto import (
    ENGINE_REGISTRY,
    MODES,
    OVERHEAD,
    TAG_BYTES,
    Buffer,
    Engine,
    as_bytes_view,
    available_engines,
)
from plinius.core.crypto_ways import OPS, Table, Way
from plinius.core.errors import ConfigError
from plinius.core.units import fmt_bytes

ENV = "PLINIUS_CRYPTO_ENGINE"
#: per mode, the fraction of the best within which ways count as equal (differences this small
#: are measurement noise): wider for ``async``, where a way that leaves cores and the GIL to the
#: training is worth a little more CPU
TIE = {"sync": 0.05, "async": 0.10}

#: how this process's last ``auto`` chose (``plinius bench`` records it in its provenance)
last_choice: dict[str, Any] = {}


def _threads(way: str) -> int:
    try:
        return int(way.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return 1


@dataclass(frozen=True)
class Plan:
    """Which way runs each op at each measured size, for one mode."""

    mode: str
    #: ``steps[op] = ((size, way), ...)``, sizes ascending
    steps: dict[str, tuple[tuple[int, str], ...]]

    def pick(self, op: str, nbytes: int) -> str:
        """The way for a call of ``nbytes`` bytes: that of the nearest measured size (log)."""
        steps = self.steps[op]
        if nbytes <= steps[0][0]:
            return steps[0][1]
        x = math.log(nbytes)
        return min(steps, key=lambda s: abs(math.log(s[0]) - x))[1]

    def used(self) -> list[str]:
        """Every way the plan hands calls to, in order of first use."""
        out: list[str] = []
        for op in OPS:
            for _, way in self.steps[op]:
                if way not in out:
                    out.append(way)
        return out

    def as_dict(self) -> dict[str, dict[str, str]]:
        return {
            op: {fmt_bytes(size): way for size, way in steps} for op, steps in self.steps.items()
        }

    def _describe_op(self, op: str) -> str:
        steps = self.steps[op]
        runs: list[list[Any]] = []  # [way, first size, last size]
        for size, way in steps:
            if runs and runs[-1][0] == way:
                runs[-1][2] = size
            else:
                runs.append([way, size, size])
        if len(runs) == 1:
            return str(runs[0][0])
        parts = []
        for i, (way, _first, last) in enumerate(runs):
            upper = math.sqrt(last * runs[i + 1][1]) if i + 1 < len(runs) else None
            lower = math.sqrt(runs[i - 1][2] * _first) if i else None
            if lower is None:
                parts.append(f"{way} below {fmt_bytes(upper or 0)}")
            elif upper is None:
                parts.append(f"{way} above")
            else:
                parts.append(f"{way} {fmt_bytes(lower)}-{fmt_bytes(upper)}")
        return ", ".join(parts)

    def describe(self) -> str:
        """One line: "cryptography/1 below 5.7 MiB, openssl[3.5.9]/2 above" (per op where the
        ops differ)."""
        seal, opened = self._describe_op("seal"), self._describe_op("open")
        if seal == opened:
            return seal
        return f"seal: {seal}; open: {opened}"


def _holds_gil(way: str) -> bool:
    """Whether a way runs with the GIL held (every engine but the native pool)."""
    return not way.startswith("openssl[")


def choose_plan(table: Table, mode: str = "sync") -> Plan:
    """The fastest way per op and measured size: least wall time (``sync``) or least CPU time
    (``async``). Ways within :data:`TIE` of the best count as equal; among them (in order) an
    asynchronous mirror prefers one that releases the GIL (the training's Python threads keep
    running), then fewer threads (cores left free), then the way of the next smaller size (fewer
    switches), then the measured best."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: give one of {', '.join(MODES)}")
    metric = 0 if mode == "sync" else 1
    steps: dict[str, tuple[tuple[int, str], ...]] = {}
    for op in OPS:
        per = table.results[op]
        chosen: list[tuple[int, str]] = []
        previous = ""
        for size in table.sizes:
            cells = sorted((per[w][size][metric], w) for w in per if size in per[w])
            best = cells[0][0]
            near = [c for c in cells if c[0] <= best * (1 + TIE[mode])]

            def rank(c: tuple[float, str], previous: str = previous) -> tuple[Any, ...]:
                gil = _holds_gil(c[1]) if mode == "async" else False
                return (gil, _threads(c[1]), c[1] != previous, c[0], c[1])

            previous = min(near, key=rank)[1]
            chosen.append((size, previous))
        steps[op] = tuple(chosen)
    return Plan(mode=mode, steps=steps)


class AutoEngine(Engine):
    """Hands each call to the engine of the way the plan picks for its op and total bytes.

    ``mode="sync"``: least wall time (the mirror has every core); ``mode="async"``: least CPU
    time per byte (an asynchronous mirror shares the cores with training). Records are those of
    every engine (the same IV, ciphertext and tag layout), so whatever seals, anything opens."""

    name = "auto"

    def __init__(self, key: bytes, plan: Plan, engines: dict[str, Engine]) -> None:
        super().__init__(key)
        missing = [w for w in plan.used() if w not in engines]
        if missing:
            raise ConfigError(f"no engine for way(s) {', '.join(missing)}")
        self.plan = plan
        self.mode = plan.mode
        self._engines = dict(engines)
        self.parallel = any(e.parallel for e in self._engines.values())
        self.threads = max(e.threads for e in self._engines.values())

    @property
    def way(self) -> str:
        return "auto"

    def describe(self) -> str:
        return self.plan.describe()

    def ways_used(self) -> dict[str, Engine]:
        return {w: self._engines[w] for w in self.plan.used()}

    def engine_for(self, op: str, nbytes: int) -> Engine:
        """The engine a call of ``op`` over ``nbytes`` plaintext bytes goes to."""
        return self._engines[self.plan.pick(op, nbytes)]

    def encrypt_into(self, aad: bytes, plaintext: Buffer, out: memoryview) -> None:
        n = as_bytes_view(plaintext).nbytes
        self.engine_for("seal", n).encrypt_into(aad, plaintext, out)

    def decrypt_into(self, aad: bytes, sealed: Buffer, out: Buffer, what: str) -> None:
        n = max(as_bytes_view(sealed).nbytes - OVERHEAD, 0)
        self.engine_for("open", n).decrypt_into(aad, sealed, out, what)

    def encrypt_many(self, jobs: Sequence[tuple[bytes, Buffer, memoryview]]) -> None:
        jobs = list(jobs)
        n = sum(as_bytes_view(p).nbytes for _, p, _ in jobs)
        self.engine_for("seal", n).encrypt_many(jobs)

    def decrypt_many(self, jobs: Sequence[tuple[bytes, Buffer, Buffer, str]]) -> None:
        jobs = list(jobs)
        n = sum(max(as_bytes_view(s).nbytes - OVERHEAD, 0) for _, s, _, _ in jobs)
        self.engine_for("open", n).decrypt_many(jobs)

    def _encrypt(
        self, iv: bytes, aad: bytes, plaintext: memoryview, ct_and_tag: memoryview
    ) -> None:
        self.engine_for("seal", plaintext.nbytes)._encrypt(iv, aad, plaintext, ct_and_tag)

    def _decrypt(self, iv: bytes, aad: bytes, ct_and_tag: memoryview, out: memoryview) -> bool:
        n = ct_and_tag.nbytes - TAG_BYTES
        return self.engine_for("open", n)._decrypt(iv, aad, ct_and_tag, out)


def _libraries(ways: Sequence[Way]) -> dict[str, dict[str, str]]:
    return {
        w.library.label: {
            "version": w.library.version_text,
            "path": w.library.path,
            "origin": w.library.origin,
        }
        for w in ways
        if w.library is not None
    }


def _record(engine: Engine, how: str, installed: list[str], mode: str, **extra: Any) -> None:
    last_choice.clear()
    last_choice.update(
        chosen=engine.name,
        how=how,
        installed=installed,
        mode=mode,
        threads=engine.threads,
        note=engine.describe(),
        **extra,
    )


def make_auto(key: bytes, *, mode: str = "sync") -> Engine:
    """The ``auto`` engine for ``key``: the forced engine, the only way installed, the one way
    fastest everywhere, or an :class:`AutoEngine` over the ways the measured plan uses."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: give one of {', '.join(MODES)}")
    installed = available_engines()
    forced = os.environ.get(ENV, "").strip()
    if forced and forced != "auto":
        if forced not in installed:
            raise ConfigError(
                f"{ENV}={forced!r}: not an installed crypto engine "
                f"(installed: {', '.join(installed)})"
            )
        engine = ENGINE_REGISTRY.load_usable(forced)(key)
        _record(engine, f"${ENV}", installed, mode)
        return engine
    ways = crypto_ways.discover()
    cpu = crypto_ways.cpu()
    facts: dict[str, Any] = {
        "cpu": f"{cpu['model']} ({cpu['cores']} cores)",
        "libcrypto": _libraries(ways),
    }
    if len(ways) == 1:
        engine = crypto_ways.build(ways[0], key)
        _record(engine, "the only way installed", installed, mode, **facts)
        return engine
    table = crypto_ways.table(ways)
    plan = choose_plan(table, mode)
    by_name = {w.name: w for w in ways}
    engines = {name: crypto_ways.build(by_name[name], key) for name in plan.used()}
    if len(engines) == 1:
        engine = next(iter(engines.values()))
        how = "measured here: one way is fastest at every size"
    else:
        engine = AutoEngine(key, plan, engines)
        how = "measured here: the fastest way per call size"
    _record(
        engine,
        how,
        installed,
        mode,
        ways=plan.as_dict(),
        table_source=table.describe_source(),
        **facts,
    )
    return engine


__all__ = ["ENV", "AutoEngine", "Plan", "choose_plan", "last_choice", "make_auto"]
