"""``plinius.errors``, a documented import path: the module itself is :mod:`plinius.core.errors`
(the same module object, not a copy)."""

import sys

from plinius.core import errors as _module

sys.modules[__name__] = _module
