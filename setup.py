"""Build hook: compiles the native Romulus engine (cffi) and ships fio_jobs/ inside the package."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["plinius", "plinius.*"]), "plinius.fio_jobs"],
    package_dir={"plinius.fio_jobs": "fio_jobs"},
    package_data={
        "plinius": ["py.typed", "zoo/*.cfg"],
        "plinius.fio_jobs": ["*.fio", "README.md"],
    },
    cffi_modules=["native/build_romulus.py:ffibuilder"],
)
