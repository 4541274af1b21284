"""The one C extension, optional: without a compiler the install goes on and the plain path runs.

Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mercurystream.shared._rowscan",
            sources=["services/shared/_rowscan.c"],
            optional=True,
        )
    ]
)
