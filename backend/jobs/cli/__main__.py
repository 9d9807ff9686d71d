"""`python -m backend.jobs.cli`."""

from backend.jobs.cli.app import main

main()
