"""Benchmarks behind ``plinius bench`` and ``asv_bench``: save/restore, storage, engine."""
