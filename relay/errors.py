"""Errors that relay answers to clients, in OpenAI's JSON shape.

Every error a client can see is a ``RelayError`` carrying its HTTP status, OpenAI
``type`` and ``code``. Messages never contain a key, a prompt or response content.

    RelayError
    ├── InvalidRequest            400 invalid_request_error
    ├── AuthError                 401 invalid_api_key
    ├── QuotaError                402 insufficient_quota
    ├── Forbidden                 403 (account_suspended, model_not_allowed, endpoint_not_allowed)
    ├── NotFound                  404 (model_not_found, not_found)
    ├── RequestTimeout            408 request_timeout (the body did not arrive in time)
    ├── RequestTooLarge           413 request_too_large
    ├── RateLimited               429 rate_limit_exceeded (carries retry_after_s)
    ├── UpstreamRejected          the upstream's own 4xx, passed on as it came
    ├── NotAvailableInCluster     501 not_available_in_cluster_mode
    ├── UpstreamError             502 upstream_error
    ├── NoUpstreamAvailable       503 no_upstream_available
    ├── StorageUnavailable        503 storage_unavailable (carries retry_after_s)
    │   └── UpstreamOverloaded    503 upstream_overloaded (529 overloaded_error on /v1/messages)
    └── UpstreamTimeout           504 upstream_timeout

``ConfigError`` is separate: it is raised at start-up (or by ``check-config``) and
names the offending key; the CLI turns it into a one-line message.
"""

from __future__ import annotations

import math

import msgspec

__all__ = [
    "AuthError",
    "ConfigError",
    "Forbidden",
    "InvalidRequest",
    "NoUpstreamAvailable",
    "NotAvailableInCluster",
    "NotFound",
    "QuotaError",
    "RateLimited",
    "RelayError",
    "RequestTimeout",
    "RequestTooLarge",
    "StorageUnavailable",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamOverloaded",
    "UpstreamTimeout",
    "error_body",
]


class ConfigError(Exception):
    """The configuration is unusable; the message names the key at fault."""


class RelayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    # When set, the answer carries retry-after: the client may try again after it.
    retry_after_s: float | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def with_retry_after(self, seconds: float) -> RelayError:
        self.retry_after_s = seconds
        return self

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        # Whole seconds, rounded up: a client that waits this long is not turned away again.
        return {"retry-after": str(max(1, math.ceil(self.retry_after_s)))}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


class InvalidRequest(RelayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class AuthError(RelayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class QuotaError(RelayError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class Forbidden(RelayError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(RelayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class RequestTimeout(RelayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RequestTooLarge(RelayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(RelayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class UpstreamError(RelayError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class NotAvailableInCluster(RelayError):
    """A route (or option) that does not run on PostgreSQL yet: refused rather than
    answered from the instance's empty local SQLite (docs/scaling.md lists them)."""

    status = 501
    type = "invalid_request_error"
    code = "not_available_in_cluster_mode"


class NoUpstreamAvailable(RelayError):
    status = 503
    type = "api_error"
    code = "no_upstream_available"


class StorageUnavailable(RelayError):
    """The database cannot commit right now: relay refuses what it could not record."""

    status = 503
    type = "api_error"
    code = "storage_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamOverloaded(NoUpstreamAvailable):
    """Every upstream tried was overloaded (Anthropic's 529): the request may be retried."""

    code = "upstream_overloaded"


class UpstreamTimeout(RelayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


class _ErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: str
    param: str | None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorDetail


_encode = msgspec.json.Encoder().encode


def error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    return _encode(_ErrorEnvelope(_ErrorDetail(message, type_, code, param)))


class UpstreamRejected(RelayError):
    """The upstream refused the request itself (a 4xx): passed back to the client as is."""

    # Without these the usage row and the fallback body (an upstream that sent no body)
    # would say 500's "server_error"/"internal_error" for what is the request's fault.
    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, status: int, body: bytes, content_type: str):
        super().__init__(f"upstream rejected the request with HTTP {status}")
        self.status = status
        self.upstream_body = body
        self.content_type = content_type
