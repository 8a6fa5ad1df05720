"""``plinius.mirror``, a documented import path: the module itself is :mod:`plinius.format.mirror`
(the same module object, not a copy)."""

import sys

from plinius.format import mirror as _module

sys.modules[__name__] = _module
