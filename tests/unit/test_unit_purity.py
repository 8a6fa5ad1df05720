"""The unit tier stays in-process: no module of ``tests/unit/`` starts a process, a server or a
kill (those belong in ``tests/system/``), and every module the conftest marks ``system`` lives
in ``tests/system/``."""

from __future__ import annotations

import ast

from conftest import SYSTEM, TESTS

#: modules whose import means the test leaves the process
PROCESS = {"subprocess", "multiprocessing", "cli_runner", "signal", "torch.distributed.run"}
CALLS = {"os.kill", "os.fork", "os.system", "os.popen", "RedisServer", "BackendContract"}


def leaves_the_process(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in PROCESS]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in PROCESS or node.module.split(".")[0] in PROCESS:
                found.append(node.module)
            found += [a.name for a in node.names if a.name in CALLS]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            if name in CALLS:
                found.append(name)
    return found


def test_unit_tests_stay_in_process() -> None:
    units = sorted((TESTS / "unit").glob("test_*.py"))
    assert len(units) > 20
    bad = {p.name: hits for p in units if (hits := leaves_the_process(p.read_text()))}
    assert bad == {}


def test_the_check_sees_a_process() -> None:
    assert leaves_the_process("import subprocess") == ["subprocess"]
    assert leaves_the_process("from cli_runner import run_cli") == ["cli_runner"]
    assert leaves_the_process("import os\nos.kill(1, 9)") == ["os.kill"]
    assert leaves_the_process("from plinius.backends.testing import BackendContract") == [
        "BackendContract"
    ]
    assert leaves_the_process("import numpy as np\nnp.zeros(3)") == []


def test_marked_system_modules_are_in_the_system_folder() -> None:
    assert sorted(
        p.name for p in (TESTS / "system").glob("test_*.py") if p.name in SYSTEM
    ) == sorted(SYSTEM)
