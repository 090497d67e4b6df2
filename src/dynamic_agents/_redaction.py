"""Masking secret values in text and log records.

Every :class:`~dynamic_agents.secrets.SecretValue` registers its value with the process-wide
:data:`REDACTOR`; :class:`RedactingFilter` replaces registered values in log records (message,
arguments and formatted tracebacks). The filter is on every ``dynamic_agents.*`` logger; add it to
your own handlers to cover agno's, litellm's or your application's loggers.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "REDACTOR",
    "RedactingFilter",
    "Redactor",
    "has_a_key_prefix",
    "looks_like_a_key",
    "masked_url",
    "protect_loggers",
    "redact_json",
    "redact_text",
    "text_holds_a_key",
]

MASK: Final = "**********"
MIN_REDACTED_LENGTH: Final = 6
"""Shorter values are not searched for in logs: masking every ``"us"`` would garble the logs."""


class Redactor:
    """The set of secret values to mask in text; thread-safe, grows with every value registered.

    Each value is masked in every form text may quote it in (as written, percent-encoded, escaped
    as ``repr`` and JSON escape it), longest first, so a value containing another is masked whole.
    A text is checked against each form while there are few; with thousands (every user's key
    registered) its own windows of :data:`MIN_REDACTED_LENGTH` characters are looked up instead,
    so a log line costs about the same with 10 or 100,000 values registered."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        # Appended under the lock, read without it: a list being appended to can be iterated, a
        # dict given new keys can be read (not iterated), and neither is ever copied whole.
        self._forms: list[str] = []
        self._by_start: dict[str, list[str]] = {}  # the forms by their first MIN_REDACTED_LENGTH
        self._lock = threading.Lock()

    def register(self, value: str) -> None:
        if len(value) < MIN_REDACTED_LENGTH or value in self._values:
            return
        # Where a URL or a form body quotes the value, it is percent-encoded; a repr (``%r``, a dict
        # or an exception shown) or JSON escapes its backslashes, quotes and others: masked so too.
        # A repr escapes a ' only when the text around it holds a " too: both ways.
        forms = {value, quote(value), quote(value, safe=""), quote_plus(value), repr(value)[1:-1]}
        forms.add(repr(value + '"')[1:-2])
        forms |= {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        with self._lock:
            if value in self._values:
                return
            for form in forms:
                starting = self._by_start.setdefault(form[:MIN_REDACTED_LENGTH], [])
                if form not in starting:  # (another value's form may be the same text)
                    starting.append(form)
                    self._forms.append(form)
            self._values.add(value)

    def redact(self, text: str) -> str:
        forms = self._forms
        if not forms:
            return text
        count, size = len(forms), len(text)
        # Rough costs on a 2-CPU VM: ~40 ns a form and ~0.1 ns a character to search the text
        # for each, against ~120 ns a character to look each of its windows up (a 200-character
        # line with 10,000 forms: 0.56 ms one way, 17 µs the other).
        if count * (40 + size // 10) <= 120 * size:
            found = [form for form in forms if form in text]
        else:
            by_start = self._by_start
            windows = {text[i : i + MIN_REDACTED_LENGTH] for i in range(size - MIN_REDACTED_LENGTH + 1)}
            found = [form for window in windows for form in by_start.get(window, ()) if form in text]
        if not found:
            return text
        for form in sorted(found, key=len, reverse=True):  # a value containing another: whole
            text = text.replace(form, MASK)
        return text

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Redactor({len(self._values)} values)"


REDACTOR: Final = Redactor()
"""The process-wide redactor every :class:`SecretValue` registers with."""


CREDENTIAL_NAME_WORDS: Final = (
    "auth",
    "key",
    "token",
    "secret",
    "password",
    "cookie",
    "credential",
    "signature",
)
"""A setting or header whose name contains one of these (``Authorization``, ``api-key``,
``X-Auth-Token``, ``bot_token``, ``Cookie``) holds a credential; others (``anthropic-version``,
``X-Team``) are shown as they are, and so are counts of tokens (:data:`_TOKEN_COUNT`)."""

_TOKEN_COUNT: Final = re.compile(
    r"(?:max|min|num|total|input|output|prompt|completion|budget|reasoning|cached)[_-]?tokens"
    r"(?![a-z])|tokens[_-]?per(?![a-z])"
)
"""A count of tokens (``max_tokens``, ``max_completion_tokens``, ``budget_tokens``,
``tokens_per_minute``), matched in the lower-cased name: a value under such a name is shown, as
the mistake it is refused for. A credential is a token (``token``, ``access_token``, ``bot_token``),
and ``tokens`` alone a list of them."""


def names_a_credential(name: object) -> bool:
    """Whether a setting or header of this name holds a credential (:data:`CREDENTIAL_NAME_WORDS`)."""
    lowered = _TOKEN_COUNT.sub("", str(name).lower())
    return any(word in lowered for word in CREDENTIAL_NAME_WORDS)


_CREDENTIAL_QUERY_WORDS: Final = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "key",
        "pass",
        "passwd",
        "password",
        "pwd",
        "secret",
        "sig",
        "signature",
        "token",
    }
)
"""A query parameter whose name's last word (any case, words split at ``_``, ``-``, ``.`` and
camelCase) is one of these carries a credential: ``key``, ``api_key``, ``apiKey``,
``access_token``, ``X-Amz-Signature``, ``sig`` (Azure SAS), ``client_secret``, ``password``.
Others are shown as they are: ``api-version``, ``timeout``, ``token_type``, ``max_tokens``."""

_NAME_WORDS: Final = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def _is_credential_query_name(name: str) -> bool:
    """Whether a URL query parameter of this name carries a credential (see
    :data:`_CREDENTIAL_QUERY_WORDS`)."""
    words = _NAME_WORDS.findall(unquote_plus(name))
    return bool(words) and words[-1].lower() in _CREDENTIAL_QUERY_WORDS


def _masked_query(query: str, register: bool) -> str:
    """The query string with the values of credential-named parameters masked (and registered)."""
    pieces: list[str] = []
    for piece in query.split("&"):
        name, equals, value = piece.partition("=")
        if equals and value and _is_credential_query_name(name):
            if register:
                REDACTOR.register(value)
                REDACTOR.register(unquote_plus(value))  # the value itself, as clients use it
            pieces.append(f"{name}={MASK}")
        else:
            pieces.append(piece)
    return "&".join(pieces)


def masked_url(url: str, *, register: bool = True) -> str:
    """The URL with the password of its userinfo and the values of credential-named query (and
    fragment) parameters masked
    (``https://svc:**********@host/v1?key=**********&api-version=2024-06-01``).
    With ``register`` (a URL the process will use: a config's, a client's), they are registered
    with :data:`REDACTOR` too, so logs and errors that quote the URL whole mask them as well; a URL
    only passing through a message is masked and forgotten (its signature changes every time)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # unparseable (a bad port...): hide whatever userinfo it may hold
        head, question, tail = url.partition("?")
        if question:
            query, hash_, fragment = tail.partition("#")
            url = f"{head}?{_masked_query(query, register)}{hash_}{_masked_query(fragment, register)}"
        scheme, separator, rest = url.partition("://")
        _, at, host = rest.rpartition("@")
        return f"{scheme}{separator}{MASK}@{host}" if at else url
    # The fragment too: OAuth's implicit flow hands the token over as #access_token=...
    query, fragment = _masked_query(parts.query, register), _masked_query(parts.fragment, register)
    if query != parts.query or fragment != parts.fragment:
        parts = parts._replace(query=query, fragment=fragment)
    elif not password:
        return url
    if password:
        if register:
            REDACTOR.register(password)
            REDACTOR.register(unquote(password))  # the value itself, as clients use and quote it
        userinfo, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:{MASK}@{host}")
    return urlunsplit(parts)


_KEY_PREFIXES: Final = (  # how providers' keys and tokens start (shown only with more after them)
    "sk-",
    "sk_",
    "gsk_",
    "xai-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xapp-",
    "AIza",
    "ghp_",
    "gho_",
    "ghs_",
    "github_pat_",
    "glpat-",
    "hf_",
    "pk_",
    "rk_",
    "AKIA",
)
_KEY_PREFIX_REST: Final = 16
_RUN_RE: Final = re.compile(r"[^_.\-]+")  # the runs between separators: "OPENAI", "API", "KEY"
_MIXED_RUN: Final = 20  # letters and digits run together this long: a key, not a word
_LONG_RUN: Final = 32  # this long with no separator at all: a key even without digits
_LOWER_CASE_PATH: Final = re.compile(r"[a-z0-9]*(?:/[a-z0-9]*)+")
"""Lower-case words and digits joined by ``/``: a file path or a URL's path, judged a segment at a
time (``/var/lib/agents/specs/customersupportagent``, ``8080/api/v1/sessions``). With an upper-case
letter the run is judged whole: base64 keys hold ``/`` too (an AWS secret access key)."""


def looks_like_a_key(part: str) -> bool:
    """Whether ``part`` (a word of a text, a reference's name part) is shaped like a key: a known
    key prefix with more after it, or a long run of letters and digits with no ``_``, ``-`` or
    ``.`` (names are words: ``OPENAI_API_KEY``, ``team-a``); a lower-case path is judged a segment
    at a time (:data:`_LOWER_CASE_PATH`)."""
    if any(
        part.startswith(prefix) and len(part) >= len(prefix) + _KEY_PREFIX_REST for prefix in _KEY_PREFIXES
    ):
        return True
    for run in _RUN_RE.findall(part):
        for piece in run.split("/") if _LOWER_CASE_PATH.fullmatch(run) else (run,):
            if len(piece) >= _LONG_RUN:
                return True
            mixed = any(c.isdigit() for c in piece) and any(c.isalpha() for c in piece)
            if len(piece) >= _MIXED_RUN and mixed:
                return True
    return False


_URL_IN_TEXT: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_WORD: Final = re.compile(r"[^\s'\"`,;:=()<>\[\]{}]+")  # key=sk-…, "token: sk-…"


def has_a_key_prefix(word: str) -> bool:
    """Whether ``word`` starts the way a provider's key does (``sk-``, ``ghp_``, ``xoxb-``,
    ``AIza``, …) and goes on for at least 16 characters, letters and digits among them: a key, not
    a word that happens to start so (``sk-learn-compatible``, ``pk_customer_identifier``)."""
    for prefix in _KEY_PREFIXES:
        if word.startswith(prefix):
            rest = word[len(prefix) :]
            if (
                len(rest) >= _KEY_PREFIX_REST
                and any(c.isdigit() for c in rest)
                and any(c.isalpha() for c in rest)
            ):
                return True
    return False


def text_holds_a_key(text: str) -> bool:
    """Whether free text (an agent's instructions) holds a credential written out: a word with a
    provider's key prefix (:func:`has_a_key_prefix`) or a URL with a password. Unlike
    :func:`looks_like_a_key`, long runs of letters and digits alone (a commit hash, a document's
    id in a link) and a URL's query values (a template's ``?token={token}``) do not count: in
    prose they are rarely keys, and refusing the text for them would refuse ordinary prose."""
    if any(has_a_key_prefix(word) for word in _WORD.findall(text)):
        return True
    return "://" in text and any(_has_a_password(url) for url in _URL_IN_TEXT.findall(text))


def _has_a_password(url: str) -> bool:
    """Whether ``url``'s userinfo holds a password (``postgresql://user:pw@host/db``); read by hand,
    as a URL with a bad port (``urlsplit`` raises then) can hold one too."""
    authority = url.partition("://")[2].partition("/")[0].partition("?")[0].partition("#")[0]
    userinfo, at, _ = authority.rpartition("@")
    return bool(at) and bool(userinfo.partition(":")[2])


def redact_text(text: str) -> str:
    """Text bound for someone who may not see secrets (an error reply to a chat user, an event):
    registered secret values, a URL's password and credential query values (``masked_url``), and
    words shaped like keys (``looks_like_a_key``: ``sk-…``, long runs of letters and digits)
    masked. For free text such as an exception's message, which may quote a connection URL or a
    provider's refusal that echoes the key."""
    # URLs first: a registered secret that is part of one (an endpoint) would hide its "://"
    if "://" in text:  # masked, not registered: the text returned no longer holds them
        text = _URL_IN_TEXT.sub(lambda match: masked_url(match.group(), register=False), text)
    text = REDACTOR.redact(text)
    return _WORD.sub(lambda match: MASK if looks_like_a_key(match.group()) else match.group(), text)


def redact_json(data: Any) -> Any:
    """Decoded JSON with every registered secret value masked in each string, keys too (a
    request's session state may hold a user's key; an error body may echo a token). Only secrets
    the process knows: other text is shown as it is. Recurses per level of nesting (a
    ``RecursionError`` for JSON nested nearly as deep as ``json.loads`` reads)."""
    if isinstance(data, str):
        return REDACTOR.redact(data)
    if isinstance(data, dict):
        return {redact_json(key): redact_json(value) for key, value in data.items()}
    if isinstance(data, list):
        return [redact_json(item) for item in data]
    return data


_RECORD_ATTRIBUTES: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
"""A log record's own attributes: the others are ``extra=`` fields."""


class RedactingFilter(logging.Filter):
    """Masks registered secret values in a record's message, arguments, traceback text and the
    texts given as ``extra=`` fields. A record whose exception quotes a secret keeps only its
    masked traceback text (``exc_text``), not the exception (``exc_info``).

    Attach it to handlers (``handler.addFilter(RedactingFilter())``) to cover every logger that
    reaches them, or to a logger for the records logged on it directly.
    """

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if not len(self.redactor):
            return True
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message (the caller's bug): not ours to
            # raise; the handler reports the record, quoting its message and arguments: masked
            record.msg = self.redactor.redact(str(record.msg))
            record.args = _redacted_args(record.args, self.redactor)
        else:
            redacted = self.redactor.redact(message)
            if redacted != message or record.args:
                record.msg, record.args = redacted, None
        for name, value in record.__dict__.items():  # extra= fields, which formatters may print
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
                record.__dict__[name] = self.redactor.redact(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            redacted = self.redactor.redact(record.exc_text)
            if redacted != record.exc_text:  # the exception quotes a secret: a formatter formatting
                # it again (a JSON one does) would show it; formatters print exc_text without it
                record.exc_text, record.exc_info = redacted, None
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


def _redacted_args(args: object, redactor: Redactor) -> tuple[str, ...] | dict[str, str]:
    if isinstance(args, Mapping):
        return {str(key): redactor.redact(str(value)) for key, value in args.items()}
    if isinstance(args, tuple):
        return tuple(redactor.redact(str(value)) for value in args)
    return (redactor.redact(str(args)),)


def protect_loggers(*names: str, redactor: Redactor = REDACTOR) -> None:
    """Put a :class:`RedactingFilter` on each named logger and on its handlers (idempotent).

    For loggers that do not propagate (agno's) or have handlers of their own (litellm's): records
    logged on them directly are masked, and so is what their handlers write.
    """
    for name in names:
        logger = logging.getLogger(name)
        for holder in (logger, *logger.handlers):
            if not any(isinstance(f, RedactingFilter) for f in holder.filters):
                holder.addFilter(RedactingFilter(redactor))
