"""setuptools needs setup.py only to hand cffi its out-of-line module (native/)."""

from setuptools import setup

setup(
    cffi_modules=[
        "native/build_native.py:ffibuilder",
        "native/build_native.py:fastpath_builder",
    ]
)
