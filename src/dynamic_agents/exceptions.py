"""Every error the library raises, in one tree.

Each class also subclasses the matching built-in, so callers can catch either::

    DynamicAgentsError
    ├── ConfigurationError (ValueError)        bad settings or arguments given by the host
    │   └── RoutingConfigError                 a routing file or rule is invalid (file, line and path)
    ├── MissingDependencyError (ImportError)   an optional extra is not installed; says what to install
    ├── EventError (ValueError)                wire data that cannot become an event
    │   ├── DecodeError                        not JSON, not UTF-8, not an object
    │   │   └── EnvelopeError                  a malformed FastStream binary envelope
    │   ├── EventValidationError               wrong types or missing fields, or a value that cannot be
    │   │                                      written as JSON (``.errors`` lists them)
    │   ├── UnsupportedSchemaVersionError      a ``schema_version`` whose major this release cannot read
    │   └── EventTooLargeError                 over the codec's size or content-length limit
    ├── LLMError                               a model call failed (message redacted; ``status`` kept)
    │   ├── LLMRequestError (ValueError)       400-class: the request was refused (context window, …)
    │   ├── LLMAuthenticationError (PermissionError)  401 / 403, after one secret refresh and retry
    │   ├── LLMTimeoutError (TimeoutError)     the call took longer than its timeout
    │   └── LLMUnavailableError (ConnectionError)  5xx, network errors, no deployment available
    │       └── LLMRateLimitError              429, or every deployment over its limits
    ├── NoRouteError (LookupError)             no rule, source default or global default for an event
    ├── ApiError                               the REST API answered an error status (``status``,
    │                                          ``detail``): raised by ``AgentsHTTPClient``
    ├── ApiUnavailableError (ConnectionError)  ``AgentsHTTPClient`` could not reach the REST API, or
    │                                          it did not answer in time
    ├── SpecError                              agent / team / workflow specs
    │   ├── SpecValidationError (ValueError)   a spec is invalid; ``path`` says where inside it
    │   ├── SpecNotFoundError (LookupError)    no spec of that kind and id
    │   ├── SpecConflictError (ValueError)     created twice, or updated from a stale version
    │   └── SpecStoreUnavailableError (ConnectionError)  the store's database could not be reached,
    │                                          or the connection was lost during a call
    ├── TransportError (ConnectionError)       the message broker failed or refused an operation
    │   ├── DeliveryError (LookupError)        a delivery, group or stream the broker does not know
    │   ├── RequeueError (ValueError)          a dead letter that exists cannot be requeued: it records
    │   │                                      no origin stream or no original fields (REST API: 409)
    │   ├── LeaseLostError                     a lease-guarded write found the lease gone
    │   └── RunLostError                       a worker's run lost its session lease: it published
    │                                          nothing (hooks see it in ``after_handle``)
    └── SecretsError                           secrets could not be had
        ├── SecretNotFoundError (LookupError)  ``require()`` found no such secret or field
        ├── SecretReferenceError (ValueError)  a malformed reference (``secret:…``, ``os.environ/…``)
        ├── SecretsUnavailableError (ConnectionError)  no source could answer and nothing usable is cached
        └── IdentityError                      the A8N Identity service refused or failed a request
            ├── IdentityRequestError (ValueError)        400 / 422: the request was invalid
            ├── IdentityAuthError (PermissionError)      401: the token is bad or expired
            ├── IdentityForbiddenError (PermissionError) 403: not allowed (another user's secret)
            ├── IdentityNotFoundError (LookupError)      404: no such secret or provider
            ├── IdentityURLError (ConfigurationError)    404 from the API's paths and from
            │                                            ``/api/v1/providers``: a wrong ``base_url``
            ├── IdentityConflictError (ValueError)       409: the name is taken for that provider and owner
            └── IdentityUnavailableError (ConnectionError)  5xx, timeouts and network errors after retries
                └── IdentityRateLimitedError             429 after the retries ran out, or with a
                                                         ``Retry-After`` over the cap (``retry_after``)

Messages name the field, the offending value (shortened, and masked when it may be a secret) and what
would be valid. ``LookupError`` is used rather than ``KeyError`` because ``str(KeyError(...))`` adds
quotes around the message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ApiError",
    "ApiUnavailableError",
    "ConfigurationError",
    "DecodeError",
    "DeliveryError",
    "DynamicAgentsError",
    "EnvelopeError",
    "EventError",
    "EventTooLargeError",
    "EventValidationError",
    "FieldError",
    "IdentityAuthError",
    "IdentityConflictError",
    "IdentityError",
    "IdentityForbiddenError",
    "IdentityNotFoundError",
    "IdentityRateLimitedError",
    "IdentityRequestError",
    "IdentityURLError",
    "IdentityUnavailableError",
    "LLMAuthenticationError",
    "LLMError",
    "LLMRateLimitError",
    "LLMRequestError",
    "LLMTimeoutError",
    "LLMUnavailableError",
    "LeaseLostError",
    "MissingDependencyError",
    "NoRouteError",
    "RequeueError",
    "RoutingConfigError",
    "RunLostError",
    "SecretNotFoundError",
    "SecretReferenceError",
    "SecretsError",
    "SecretsUnavailableError",
    "SpecConflictError",
    "SpecError",
    "SpecNotFoundError",
    "SpecStoreUnavailableError",
    "SpecValidationError",
    "TransportError",
    "UnsupportedSchemaVersionError",
]


class DynamicAgentsError(Exception):
    """Base class of every error raised by dynamic-agents."""

    def __reduce__(self) -> tuple[Callable[..., DynamicAgentsError], tuple[object, ...], dict[str, object]]:
        # Pickle (process pools) and copy rebuild an exception by calling its class with ``args``,
        # the formatted message: wrong for the errors whose ``__init__`` takes other arguments.
        # Rebuilt without ``__init__``: the same ``args``, then the attributes.
        return _rebuild, (type(self), self.args), dict(vars(self))


def _rebuild(cls: type[DynamicAgentsError], args: tuple[object, ...]) -> DynamicAgentsError:
    error = cls.__new__(cls)
    error.args = args  # (OSError's __new__ leaves them to the __init__ of a subclass that has one)
    return error


class ConfigurationError(DynamicAgentsError, ValueError):
    """A setting or argument given by the host is invalid."""


class RoutingConfigError(ConfigurationError):
    """A routing configuration is invalid. ``source`` (a file name or ``<dict>``), ``line`` (1-based,
    when known) and ``path`` (``discord.routing.rules[2].content_pattern``) say where. An
    :class:`~dynamic_agents.routing.EventRouter`'s own checks (its rules, ``source_defaults``,
    ``check_targets``) read no file or mapping: ``source`` is empty and the message has no prefix."""

    def __init__(self, message: str, *, source: str = "", line: int | None = None, path: str = "") -> None:
        self.source = source
        self.line = line
        self.path = path
        where = source + (f":{line}" if source and line is not None else "")
        if path:
            where = f"{where} at {path}" if where else path
        super().__init__(f"{where}: {message}" if where else message)


class LLMError(DynamicAgentsError):
    """A model call failed. The message has every known secret value masked; ``status`` is the
    provider's HTTP status when there was one, ``model`` the model group asked for."""

    def __init__(self, message: str, *, status: int | None = None, model: str | None = None) -> None:
        self.status = status
        self.model = model
        super().__init__(message)


class LLMRequestError(LLMError, ValueError):
    """The provider refused the request (400-class), e.g. the context window was exceeded."""


class LLMAuthenticationError(LLMError, PermissionError):
    """The key was refused (401 / 403). A 401 first refreshes the keys once and, if one changed (or
    a deployment was withdrawn, its key revoked), retries once; a 403 (no permission for that
    model or resource) is raised as it comes."""


class LLMTimeoutError(LLMError, TimeoutError):
    """The call took longer than its timeout."""


class LLMUnavailableError(LLMError, ConnectionError):
    """5xx, network errors, or no deployment of the model group is available."""


class LLMRateLimitError(LLMUnavailableError):
    """429, or every deployment of the group is over its rpm/tpm limits."""


class NoRouteError(DynamicAgentsError, LookupError):
    """No rule matched an event and no default target is configured for its source."""


class ApiError(DynamicAgentsError):
    """The REST API answered an error status, or a redirect (not followed): ``status`` is the HTTP
    status, ``detail`` the body's ``detail`` (a string, or the JSON the route sent; the whole JSON
    body when it has no ``detail``, as a gateway's may not), or the reason phrase when the body is
    not JSON (a redirect's followed by where it points); or a success that is not the API's answer
    (no JSON, a stream without its result), ``detail`` saying so. Raised by
    :class:`~dynamic_agents.api.AgentsHTTPClient`, for any status, so it has no matching built-in."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"the agents API answered {status}: {detail}")


class ApiUnavailableError(DynamicAgentsError, ConnectionError):
    """:class:`~dynamic_agents.api.AgentsHTTPClient` could not reach the REST API (connection
    refused, DNS, TLS, a connection cut mid-answer) or it did not answer within the timeout: the
    call may or may not have been carried out (an ``execute`` retried with the same
    ``idempotency_key`` runs once)."""


class MissingDependencyError(DynamicAgentsError, ImportError):
    """An optional dependency is missing; the message says how to install it (``pip install …``)."""

    def __init__(self, feature: str, extra: str | None = None, *, install: str | None = None) -> None:
        self.feature = feature
        self.extra = extra
        if extra is not None:
            install = f"pip install 'dynamic-agents[{extra}]'"
        super().__init__(f"{feature} is not available: {install or 'install it'}")


class EventError(DynamicAgentsError, ValueError):
    """Data read from (or about to be written to) the wire cannot become a valid event."""


class DecodeError(EventError):
    """The payload is not decodable: not UTF-8, not JSON, or not a JSON object."""


class EnvelopeError(DecodeError):
    """A FastStream binary envelope is malformed (truncated, or a length runs past the end)."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field: where it is, what was found (shortened) and what is wrong."""

    location: str
    message: str
    value: str | None = None

    def __str__(self) -> str:
        found = f" (got {self.value})" if self.value is not None else ""
        return f"{self.location}: {self.message}{found}"


class EventValidationError(EventError):
    """The payload decoded but does not fit the event model; ``errors`` lists each field."""

    def __init__(self, model: str, errors: tuple[FieldError, ...]) -> None:
        self.model = model
        self.errors = errors
        details = "; ".join(str(error) for error in errors)
        super().__init__(f"invalid {model}: {details}")


class UnsupportedSchemaVersionError(EventError):
    """The event's ``schema_version`` has a major version this release cannot read."""

    def __init__(self, version: str, supported_major: int) -> None:
        self.version = version
        self.supported_major = supported_major
        super().__init__(
            f"schema_version {version!r} is not supported: this release reads major version "
            f"{supported_major} ({supported_major}.x)"
        )


class EventTooLargeError(EventError):
    """An encoded event or its content is over the configured limit. ``size`` and ``limit`` are in
    ``unit`` (``"bytes"`` for an encoded event, bounded by the codec's ``max_size``;
    ``"characters"`` for ``content``, bounded by ``max_content_length``); ``setting`` names the
    :class:`~dynamic_agents.events.EventCodec` setting to raise."""

    def __init__(
        self, what: str, size: int, limit: int, *, unit: str | None = None, setting: str | None = None
    ) -> None:
        content = what == "content"
        self.what = what
        self.size = size
        self.limit = limit
        self.unit = unit or ("characters" if content else "bytes")
        self.setting = setting or ("max_content_length" if content else "max_size")
        super().__init__(
            f"{what} is {size} {self.unit} long, over the limit of {limit} {self.unit} "
            f"(EventCodec {self.setting})"
        )


class TransportError(DynamicAgentsError, ConnectionError):
    """The message broker failed, or refused an operation."""


class DeliveryError(TransportError, LookupError):
    """A delivery, consumer group or stream is unknown to the broker."""


class RequeueError(TransportError, ValueError):
    """A dead letter that exists cannot be requeued: it does not say which stream it came from, or
    it has no original fields to put back. ``entry_id`` is the dead letter's id, ``stream`` the
    dead-letter stream. Unlike a :class:`DeliveryError` (no such dead letter), retrying will not
    help: purge the dead letter, or publish its request yourself."""

    def __init__(self, entry_id: str, stream: str, why: str) -> None:
        self.entry_id = entry_id
        self.stream = stream
        super().__init__(
            f"dead letter {entry_id!r} on {stream!r} cannot be requeued: {why}; purge it, or publish "
            "its request yourself"
        )


class LeaseLostError(TransportError):
    """A write that needed a session lease found it expired or held by someone else: nothing was
    written."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"the lease of session {session_id!r} is no longer held; nothing was written")


class RunLostError(TransportError):
    """A worker's run lost its session lease (it expired while the worker stalled, or another
    worker holds it now), so the worker published nothing for it: the request stays pending and
    another worker answers it. ``request_id`` and ``session_id`` say which. Hooks receive it in
    ``after_handle``; a run whose stream entry was taken over ends in a cancellation instead."""

    def __init__(self, request_id: str, session_id: str) -> None:
        self.request_id = request_id
        self.session_id = session_id
        super().__init__(
            f"request {request_id!r} lost the lease of session {session_id!r}: nothing was published "
            "(another worker answers it)"
        )


class SecretsError(DynamicAgentsError):
    """Secrets could not be had. Messages never carry a secret value."""


class SecretNotFoundError(SecretsError, LookupError):
    """``require()`` found no such secret, or the secret has no such field."""


class SecretReferenceError(SecretsError, ValueError):
    """A secret reference is malformed; the message says which forms are valid."""


class SecretsUnavailableError(SecretsError, ConnectionError):
    """No source could answer, and no cached value is usable (or its grace has run out)."""


class IdentityError(SecretsError):
    """The A8N Identity service refused or failed a request.

    ``status`` is the HTTP status (``None`` for network errors); the message names the method and
    path and never includes a secret value or an unredacted response body.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class IdentityRequestError(IdentityError, ValueError):
    """400 / 422: the service rejected the request as invalid."""


class IdentityAuthError(IdentityError, PermissionError):
    """401: the token is bad or expired (after one refresh and retry)."""


class IdentityForbiddenError(IdentityError, PermissionError):
    """403: the token may not do this (for instance, read another user's secret)."""


class IdentityNotFoundError(IdentityError, LookupError):
    """404: no such secret or provider."""


class IdentityURLError(IdentityError, ConfigurationError):
    """The Identity API is not where ``base_url`` points: a request answered ``404`` and so did
    ``GET /api/v1/providers``, which the service always serves. Not "no such secret": a wrong
    ``base_url`` (a path prefix too many or too few) made every secret read as missing."""


class IdentityConflictError(IdentityError, ValueError):
    """409: a secret with that name already exists for that provider and owner."""


class IdentityUnavailableError(IdentityError, ConnectionError):
    """5xx, timeouts or network errors, after the retries ran out."""


class IdentityRateLimitedError(IdentityUnavailableError):
    """429: still rate limited after the retries ran out, or told to wait longer (``Retry-After``)
    than the client's ``max_retry_after``, which is raised at once. ``retry_after`` is the server's
    ``Retry-After`` in seconds, when it sent one."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status)


class SpecError(DynamicAgentsError):
    """A problem with an agent, team or workflow spec."""


class SpecValidationError(SpecError, ValueError):
    """A spec is invalid. ``path`` locates the problem inside it (``tools[1].name``), ``spec`` names
    the spec (``agent 'support'``)."""

    def __init__(self, message: str, *, spec: str = "", path: str = "") -> None:
        self.detail = message
        self.spec = spec
        self.path = path
        where = " ".join(part for part in (spec, f"at {path}" if path else "") if part)
        super().__init__(f"{where}: {message}" if where else message)


class SpecNotFoundError(SpecError, LookupError):
    """No spec of that kind and id."""


class SpecConflictError(SpecError, ValueError):
    """A spec was created twice, or updated / deleted from a version that is no longer current.
    ``current`` is the stored version (``None`` when the spec does not exist)."""

    def __init__(self, message: str, *, current: int | None = None) -> None:
        self.current = current
        super().__init__(message)


class SpecStoreUnavailableError(SpecError, ConnectionError):
    """A spec store's database could not be reached, or the connection was lost during a call
    (the call may or may not have been carried out: read the spec again before retrying a write).
    The message names the store and the database's reason, never the SQL or its parameters."""
