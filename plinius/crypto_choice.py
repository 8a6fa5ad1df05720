"""What engine ``auto`` means: the first installed in fastest-first order, or the one
``$PLINIUS_CRYPTO_ENGINE`` names; :data:`last_choice` records which and why for reports.

``openssl`` comes first where it is built: it is the faster of both ways on every call size,
because calls smaller than its ``serial_below`` go to ``cryptography``'s one-core path (the
wheel's OpenSSL seals cache-resident buffers faster than the system libcrypto on all cores) and
larger ones to its own thread pool (memory-bound, where all cores win). See
:class:`plinius.crypto_native.OpenSSLEngine`.
"""

from __future__ import annotations

import os
from typing import Any

from plinius.errors import ConfigError

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
    if chosen == "openssl":
        from plinius.crypto import _cryptography_usable
        from plinius.crypto_native import default_serial_below, default_threads

        below = default_serial_below() if _cryptography_usable() else 0
        last_choice.update(
            threads=default_threads(),
            serial_below=below,
            note=(
                f"calls under {below >> 20} MiB on one core of cryptography, larger ones on "
                f"{default_threads()} threads of the native engine"
                if below
                else "every call on the native engine"
            ),
        )
    return chosen


__all__ = ["ENV", "choose", "last_choice"]
