"""Build of the native driver (vvfs/driver/_native.pyx); the metadata is in setup.cfg.

The extension is optional: without Cython or a C compiler vvfs installs
without it and the node serves every request through pyfuse3 (the Python
engine), saying so in its log.
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # no Cython: the Python engine only
    extensions = []
else:
    extensions = cythonize(
        [Extension("vvfs.driver._native", ["vvfs/driver/_native.pyx"],
                   extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
                   optional=True)],
        language_level=3, quiet=True)

setup(ext_modules=extensions)
