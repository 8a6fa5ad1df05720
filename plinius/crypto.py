"""``plinius.crypto``, a documented import path: the module itself is :mod:`plinius.core.crypto`
(the same module object, not a copy)."""

import sys

from plinius.core import crypto as _module

sys.modules[__name__] = _module
