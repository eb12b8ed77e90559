"""Expected failures of the replay service (all :class:`common.errors.RelaxRLError`)."""
from __future__ import annotations

from common.errors import RelaxRLError


class ReplayError(RelaxRLError):
    """A replay operation failed for a reason the caller can act on."""


class ReplayConnectionError(ReplayError, ConnectionError):
    """Redis could not be reached (after retrying with backoff); the message holds the URL, password hidden."""


class ReplayConfigError(ReplayError, ValueError):
    """Table settings are invalid or would deadlock, or disagree with the tables already in Redis."""


class RateLimiterTimeout(ReplayError, TimeoutError):
    """A blocking insert or sample was not granted by the rate limiter before its timeout."""
