"""What engine ``auto`` means: the first installed in fastest-first order, or the one
``$PLINIUS_CRYPTO_ENGINE`` names; :data:`last_choice` records which and why for reports.

``openssl`` comes first where it is built: it is the faster of both ways on every call size,
because calls smaller than its ``serial_below`` go to ``cryptography``'s one-core path (the
wheel's OpenSSL seals cache-resident buffers faster than the system libcrypto on all cores) and
larger ones to its own thread pool (memory-bound, where all cores win). See
:class:`plinius.core.crypto_native.OpenSSLEngine`.
"""

from __future__ import annotations

import os
from typing import Any

from plinius.core.errors import ConfigError

ENV = "PLINIUS_CRYPTO_ENGINE"

#: how this process chose (``plinius bench`` records it in its provenance)
last_choice: dict[str, Any] = {}


def choose(available: list[str]) -> str:
    """The engine ``auto`` stands for, given the installed ones (fastest-first order)."""
    forced = os.environ.get(ENV, "").strip()
    if forced and forced != "auto":
        if forced not in available:
            raise ConfigError(
                f"{ENV}={forced!r}: not an installed crypto engine "
                f"(installed: {', '.join(available)})"
            )
        chosen, how = forced, f"${ENV}"
    else:
        chosen, how = available[0], "fastest installed"
    last_choice.clear()
    last_choice.update(chosen=chosen, how=how, installed=list(available))
    return chosen


def record(engine: Any) -> None:
    """Add to :data:`last_choice` how the engine ``auto`` built splits its calls (read from the
    engine itself: ``threads`` and ``serial_below`` of the ``openssl`` engine)."""
    below = getattr(engine, "serial_below", None)
    if below is None:
        return
    threads = engine.threads
    last_choice.update(
        threads=threads,
        serial_below=below,
        note=(
            f"calls under {below >> 20} MiB on one core of cryptography, larger ones on "
            f"{threads} threads of the native engine"
            if below
            else "every call on the native engine"
        ),
    )


__all__ = ["ENV", "choose", "last_choice", "record"]
