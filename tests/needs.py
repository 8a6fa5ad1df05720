"""What a test needs that a machine may lack: one rule for every such test.

CI (``.ci/run``, then ``tox``, with ``CI=true``) installs every tool the tests use (fio,
redis-server, openssl) and every extra; so there a missing tool, extra or disk fails the test,
never skips it. On a developer's machine the test is skipped with the reason. The one thing CI
lacks by design is torch off Python 3.11 (the ``torch`` and ``bench`` extras pin it to the 3.11
CPU wheel): a test that needs torch is skipped there with :data:`TORCH_REASON`, everywhere.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import pytest

#: why torch is missing on Python 3.12 and 3.13 (the reason every torch test skips with there)
TORCH_REASON = "torch==2.13.0 is installed only in the Python 3.11 envs"
#: where the extras bring torch
TORCH_PYTHON = (3, 11)


def in_ci() -> bool:
    """``CI`` is set (CI sets ``CI=true``; tox passes it on)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(why: str, *, torch: bool = False) -> NoReturn:
    """Stop a test that cannot run here because of ``why``: skip it with ``why`` locally, fail it
    under CI. ``torch``: the test needs torch, which off Python 3.11 is skipped everywhere."""
    if torch and sys.version_info[:2] != TORCH_PYTHON:
        pytest.skip(f"{TORCH_REASON} ({why})", allow_module_level=True)
    if in_ci():
        pytest.fail(f"{why} (CI installs everything the tests need: not skipped)", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def require(why: str | None, *, torch: bool = False) -> None:
    """Go on when ``why`` is None (nothing is missing), else :func:`missing`."""
    if why is not None:
        missing(why, torch=torch)


def import_torch() -> Any:
    """torch, for a test that needs it (:func:`missing` with ``torch`` when it is not
    importable)."""
    try:
        import torch
    except ImportError as exc:
        missing(f"torch is not importable: {exc}", torch=True)
    return torch
