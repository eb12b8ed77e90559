"""Expected failures: the CLI prints their message in one line, not a traceback.

Every package raises a subclass of :class:`RelaxRLError` (it imports nothing else of
``relaxrl``), with a message that names the input and the fix.
"""
from __future__ import annotations


class RelaxRLError(Exception):
    """Base of errors caused by input or environment (bad file, bad config, unreachable service)."""


class ConfigError(RelaxRLError, ValueError):
    """A configuration file or override is invalid; the message says which key and how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM while a command could not stop cleanly (a run still starting, or a second SIGTERM): abort like
    Ctrl-C, with the shell's status for SIGTERM."""

    exit_status = 143
