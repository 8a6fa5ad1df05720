"""``plinius.fsutil``, a documented import path: the module itself is :mod:`plinius.core.fsutil`
(the same module object, not a copy)."""

import sys

from plinius.core import fsutil as _module

sys.modules[__name__] = _module
