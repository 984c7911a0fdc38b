"""Subcommands of ``python -m vision`` (one module each; see :mod:`vision.cli`)."""
