"""The errors a user can cause: each carries a one-line message and the command's exit status."""
from __future__ import annotations


class SweepError(Exception):
    """A failure the user can act on: the message names the file, key, value or store at fault."""
    exit_code = 2


class SettingsError(SweepError, ValueError):
    """A command-line setting that cannot be used (device, jobs, backend, ...)."""
