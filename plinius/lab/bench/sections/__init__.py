"""One module per ``plinius bench`` section; each registers itself with
:func:`plinius.lab.bench.registry.register` when imported (the registry imports every module
here)."""
