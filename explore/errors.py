"""The domain error hierarchy: what went wrong, in the service's own terms.

Every package raises these (never HTTP statuses); `decision_service.errors` maps each class to
one HTTP status in one place, and answers `{"error": {"code", "message"}}`. `code` is the
machine-readable reason (stable, documented in the README), `message` says what to fix.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "DomainError",
    "Forbidden",
    "InvalidInput",
    "InvalidJson",
    "NotFound",
    "PayloadTooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
]


class DomainError(Exception):
    """Base of every error the service reports to a client."""

    default_code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class InvalidInput(DomainError):
    """The request is well-formed JSON but breaks a rule or a limit (422)."""

    default_code = "invalid_request"


class InvalidJson(DomainError):
    """The body is not JSON (or holds NaN/Infinity) (400)."""

    default_code = "invalid_json"


class PayloadTooLarge(DomainError):
    """The body exceeds the configured limit (413)."""

    default_code = "payload_too_large"


class NotFound(DomainError, LookupError):
    """A loop, event, model or evaluation that does not exist (404). Also a LookupError."""

    default_code = "not_found"


class Conflict(DomainError):
    """The request contradicts what is already stored (409)."""

    default_code = "conflict"


class TooManyRequests(DomainError):
    """A quota is used up (e.g. evaluations running per loop); retry after `retry_after_s` (429)."""

    default_code = "too_many_requests"

    def __init__(self, message: str, code: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, code)
        self.retry_after_s = retry_after_s


class Unauthorized(DomainError):
    """No valid key (401)."""

    default_code = "unauthorized"


class Forbidden(DomainError):
    """A valid key without the role the route needs (403)."""

    default_code = "forbidden"


class Unavailable(DomainError):
    """The store cannot answer for this request right now; retrying later is safe (503)."""

    default_code = "store_unavailable"

    def __init__(self, message: str, code: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, code)
        self.retry_after_s = retry_after_s
