"""The `leantune` command (typer): parses arguments, calls the library, prints with rich.

One module per group of commands; importing them registers the commands on ``app``.
"""
from . import runs, listings, guide, curve, judge, data, synth, curate, export, serve, webui, recipes  # noqa: F401, I001  (registers the commands, in the order --help lists them)
from .app import app, user_errors

__all__ = ["app", "user_errors"]
