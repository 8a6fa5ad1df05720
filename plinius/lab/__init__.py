"""The lab: benchmarks, fio, experiments and reports, plugged in over the product."""
