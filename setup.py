"""Build hook: compiles the native Romulus engine with cffi at install time."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
cffi_modules = []
if (HERE / "native" / "build_romulus.py").exists():
    cffi_modules.append("native/build_romulus.py:ffibuilder")

setup(cffi_modules=cffi_modules)
