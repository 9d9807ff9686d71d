"""Lint and tests in isolated environments: `nox -s lint tests`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[sandbox]", *nox.project.dependency_groups(PYPROJECT, "test", "tasks"))
    session.run("pytest", *session.posargs, env={"TERM": "dumb", "NO_COLOR": "1"})
