"""Expected failures of the replay service (all :class:`common.errors.RelaxRLError`)."""
from __future__ import annotations

from common.errors import ConfigError, RelaxRLError


class ReplayError(RelaxRLError):
    """A replay operation failed for a reason the caller can act on."""


class ReplayConnectionError(ReplayError, ConnectionError):
    """Redis could not be reached (after retrying with backoff); the message holds the URL, password hidden."""


class ReplayConfigError(ReplayError, ConfigError):
    """The replay's settings disagree with the tables already in Redis, or a Redis URL or directory is unusable.
    (Table settings that are invalid or would deadlock are :class:`ConfigError`s of the table specs.)"""


class RateLimiterTimeout(ReplayError, TimeoutError):
    """A blocking insert or sample was not granted by the rate limiter before its timeout."""


class InsertStopped(ReplayError):
    """A blocking insert was given up because its writer is stopping (``insert(..., stop=...)``); the
    ``inserted_keys`` attribute holds the keys of the items stored before."""
