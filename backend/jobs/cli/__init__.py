"""The Typer app (parse -> logging -> settings -> run -> exit code), its tables and the
terminal progress. The only package that imports typer.
"""

from backend.jobs.cli.app import app, main

__all__ = ["app", "main"]
