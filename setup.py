"""The one compiled part: AES-256-GCM sealing for the node's store (see percolate_node/store/_gcm.c).

Everything else about the distribution is in pyproject.toml. Building needs a C
compiler, the Python headers and OpenSSL's headers (Debian: gcc, libssl-dev);
scripts/setup.sh installs them.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "percolate_node.store._gcm",
    sources=["percolate_node/store/_gcm.c"],
    depends=["percolate_node/store/_aes_ni.h"],
    libraries=["crypto"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
)])
