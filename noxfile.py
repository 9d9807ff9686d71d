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
    session.run("lint-imports")  # the layers of pyproject's [tool.importlinter]
    session.run("vulture")  # dead code, configured in pyproject's [tool.vulture]


@nox.session
def tests(session: nox.Session) -> None:
    groups = nox.project.dependency_groups(PYPROJECT, "test", "tasks")
    session.install("-e", ".[sandbox,cluster]", *groups)
    # Most of the suite waits on loopback servers and subprocesses, not on the CPU: four
    # workers on two cores finish it in well under half the time of one.
    args = session.posargs or ["-n", "4", "--dist", "loadgroup"]  # xdist_group: one cluster
    session.run("pytest", *args, env={"TERM": "dumb", "NO_COLOR": "1"})
