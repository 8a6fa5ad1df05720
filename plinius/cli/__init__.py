"""The ``plinius`` command line: one module per subcommand, each exposing ``register``."""
