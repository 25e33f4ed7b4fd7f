"""The ``fraudstream`` command line: thin commands over the packages that do the work."""

from fraudstream.cli.app import app, main

__all__ = ["app", "main"]
