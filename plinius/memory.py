"""``plinius.memory``, a documented import path: the module itself is :mod:`plinius.core.memory`
(the same module object, not a copy)."""

import sys

from plinius.core import memory as _module

sys.modules[__name__] = _module
