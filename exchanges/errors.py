"""Our own venue errors: every library exception is translated into one of these at the boundary."""

from __future__ import annotations


class VenueError(Exception):
    """Base class of every venue error; `retryable` says whether the same call may be tried again."""

    retryable = False

    def __init__(self, message: str, *, venue: str = "") -> None:
        super().__init__(message)
        self.venue = venue


class TemporaryError(VenueError):
    """The venue could not answer now (5xx before sending, connection refused); safe to retry reads."""

    retryable = True


class RateLimitError(TemporaryError):
    """The venue asked us to slow down; `retry_after` is in seconds when the venue said."""

    def __init__(self, message: str, *, venue: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, venue=venue)
        self.retry_after = retry_after


class VenueUnavailableError(TemporaryError):
    """Our circuit breaker (or rate budget) refused the call before anything was sent: nothing reached the venue.

    `retry_after` is in seconds, when known (the breaker's remaining cool-down).
    """

    def __init__(self, message: str, *, venue: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, venue=venue)
        self.retry_after = retry_after


class OrderStatusUnknownError(VenueError):
    """A create or cancel may or may not have reached the venue: ask by client id before resending."""

    retryable = True


class InvalidOrderError(VenueError):
    """The venue refused the order as malformed (size, price, market): resending will not help."""


class InsufficientFundsError(InvalidOrderError):
    """Not enough balance or margin for the order."""


class OrderNotFoundError(VenueError):
    """The venue does not know the order (by venue id or client id)."""


class AuthError(VenueError):
    """Credentials are missing, malformed or refused."""


class MarketNotFoundError(InvalidOrderError):
    """The symbol is not traded on this venue."""


class LiveVenueForbiddenError(VenueError):
    """A paper account tried to build a live venue client (paper can never reach a live venue)."""
