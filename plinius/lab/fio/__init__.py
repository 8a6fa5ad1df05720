"""fio, the external storage benchmark, run the way the paper ran it (Fig. 2) on every backend.

``run_fio()`` finds and checks fio, runs the job files of ``fio_jobs/`` against each backend's
directory and returns a ``FioReport`` of typed ``JobResult``s with the facts of every target
(emulated or real); ``render_markdown`` and ``plot_fig2`` turn it into ``fio.md`` and
``fio_fig2.png``. ``run_fio_clients()`` runs the same jobs on ``fio --server`` hosts through fio's
client mode and merges them, every row naming its host. ``plinius fio`` is the command-line
front end.
"""

from __future__ import annotations

from plinius.lab.fio.client import FioClient, FioServerError, parse_clients
from plinius.lab.fio.remote import run_fio_clients
from plinius.lab.fio.report import plot_fig2, render_markdown, table_rows
from plinius.lab.fio.results import FioOutputError, JobResult, average_runs, parse_fio_json
from plinius.lab.fio.runner import (
    SCHEMA,
    SUITES,
    FioParams,
    FioReport,
    Target,
    check_directory,
    jobs_dir,
    plan_targets,
    run_fio,
)
from plinius.lab.fio.tool import MIN_VERSION, FioRun, FioTool, find_fio, parse_version

__all__ = [
    "MIN_VERSION",
    "SCHEMA",
    "SUITES",
    "FioClient",
    "FioOutputError",
    "FioParams",
    "FioReport",
    "FioRun",
    "FioServerError",
    "FioTool",
    "JobResult",
    "Target",
    "average_runs",
    "check_directory",
    "find_fio",
    "jobs_dir",
    "parse_clients",
    "parse_fio_json",
    "parse_version",
    "plan_targets",
    "plot_fig2",
    "render_markdown",
    "run_fio",
    "run_fio_clients",
    "table_rows",
]
