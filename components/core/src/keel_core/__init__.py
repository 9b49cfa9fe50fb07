"""Keel core: the hook specifications, the plugin manager, configuration schemas and the CLI.

Every other Keel distribution depends on this one and on nothing else of Keel's;
components meet through the hooks declared in :mod:`keel_core.hookspecs`.
"""

__version__ = "0.1.0"

from keel_core.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
