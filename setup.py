"""Build hook: compiles the native Romulus engine (cffi) and ships fio_jobs/ inside the package."""

import importlib.util
import os
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _git_commit() -> str | None:
    """plinius/core/gitcommit.py, loaded by path: the package itself is not importable yet."""
    spec = importlib.util.spec_from_file_location(
        "_plinius_gitcommit", HERE / "plinius" / "core" / "gitcommit.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commit: str | None = module.checkout_commit(HERE)
    return commit


class BuildPyWithCommit(build_py):
    """Records the git commit inside the built package, so every report of an installed
    (non-editable) plinius names the code that produced it."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the live checkout instead
        commit = _git_commit()
        if commit:
            (Path(self.build_lib) / "plinius" / "_build_commit.txt").write_text(commit + "\n")


# A sanitized engine (PLINIUS_SANITIZE=1, tox -e sanitize) is built in its own build directory:
# in-tree builds skip an extension whose build/ copy looks up to date, so sharing build/ would
# package a normal engine as the sanitized one (or the reverse).
SANITIZE = os.environ.get("PLINIUS_SANITIZE", "") not in ("", "0")

setup(
    options={"build": {"build_base": "build/sanitize" if SANITIZE else "build"}},
    packages=[*find_packages(include=["plinius", "plinius.*"]), "plinius.fio_jobs"],
    package_dir={"plinius.fio_jobs": "fio_jobs"},
    package_data={
        "plinius": ["py.typed", "data/*.u8.xz", "data/README.md"],
        "plinius.nn": ["cfg/*.cfg"],
        "plinius.fio_jobs": ["*.fio", "README.md"],
        "plinius.lab.spot": ["data/*.csv.gz", "data/README.md"],
    },
    cmdclass={"build_py": BuildPyWithCommit},
    # the native AEAD engine is optional: without OpenSSL's headers it is left out (see
    # native/build_aead.py) and plinius uses its Python engines
    cffi_modules=["native/build_romulus.py:ffibuilder", "native/build_aead.py:ffibuilder"],
)
