"""``plinius.datasets``, a documented import path: the module itself is
:mod:`plinius.core.datasets` (the same module object, not a copy)."""

import sys

from plinius.core import datasets as _module

sys.modules[__name__] = _module
