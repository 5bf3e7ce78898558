"""Reproducible GPT-2 training and evaluation on Wikipedia."""

__version__ = "0.1.0"


class UserError(Exception):
    """Bad input or environment: the CLI prints the message as one line and exits 2."""
