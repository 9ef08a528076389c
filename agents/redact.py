"""Redaction: secrets and e-mail addresses scrubbed from text and structured data.

This module owns what Stalwart treats as a secret and how it is hidden, for everything that
leaves the process (Sentry events, log lines, artifacts, stored snapshots):

* `scrub_text` redacts API keys, bearer tokens, URL credentials, `password=...`-style pairs,
  JWTs, the literal secrets in force, and e-mail addresses;
* `scrub_value` walks mappings, lists, tuples and bytes, scrubbing every string and replacing
  whole the values under secret-looking keys (`is_sensitive_key`);
* the literal secrets in force are those configured in settings (API key, Sentry DSN, database
  password) plus those of every source registered with `add_secret_source` (the loaded
  Prefect blocks, the Sentry DSN `init_sentry` installed).

Example:
    >>> scrub_text("password=hunter2 mail bob@example.com")
    'password=*** mail [email]'
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from agents.settings import get_current_settings

__all__ = [
    "EMAIL_PLACEHOLDER",
    "REDACTED",
    "add_secret_source",
    "is_sensitive_key",
    "scrub_error",
    "scrub_text",
    "scrub_value",
]

REDACTED = "***"
"""What a redacted secret is replaced by."""

EMAIL_PLACEHOLDER = "[email]"
"""What an e-mail address is replaced by."""

_MIN_LITERAL_SECRET_LENGTH = 4
"""Configured secrets shorter than this are not searched for (they would redact ordinary text)."""

_SENSITIVE_KEY = re.compile(
    r"passw(?:or)?d|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|authorization|credential|dsn|cookie",
    re.IGNORECASE,
)
# Token *counts* (model usage) are not secrets: `max_tokens`, `prompt_tokens`, `tokens_used`...
_TOKEN_COUNT_KEY = re.compile(
    r"(?:max|prompt|completion|total|input|output|reasoning|cached|num)[_-]?tokens"
    r"|tokens(?:[_-](?:used|count|total|in|out))?",
    re.IGNORECASE,
)
# Every pattern starts at the beginning of a run of its characters (a negative lookbehind), so
# scrubbing stays linear on long inputs such as `a.a.a.a...` (no scan from every position).
_URL_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@'\"<>]*@"
)
_BEARER = re.compile(r"\b(?P<scheme>bearer)\s+[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)
_OPENAI_KEY = re.compile(r"(?<![\w\-])sk-[A-Za-z0-9_\-]{16,}")
_JWT = re.compile(r"(?<![\w\-])eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]+")
_KEY_VALUE = re.compile(
    r"(?<![\w.\-])(?P<key>[\w.\-]+)"
    r"(?P<sep>[\"']?[ \t]*[=:][ \t]*)"
    r"(?P<scheme>(?:bearer|basic|digest|token)[ \t]+)?"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&=\'\"}\])]+)",
    re.IGNORECASE,
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"
)

_MAX_DEPTH = 64
"""`scrub_value` leaves values nested deeper than this as they are."""

SecretSource = Callable[[], Iterable[str]]
"""A callable giving literal secret values in force now (read on every scrub: keep it cheap)."""

_sources_lock = threading.Lock()
_sources: tuple[SecretSource, ...] = ()


def add_secret_source(source: SecretSource) -> None:
    """Have `scrub_text` and `scrub_value` also redact the values `source()` gives.

    `source` is called on every scrub, so it must be cheap and must not load anything. Adding
    the same source twice adds it once.

    Args:
        source: A callable returning the literal secrets in force (empty strings are ignored).

    Example:
        >>> planted: list[str] = []
        >>> add_secret_source(planted.copy)
        >>> planted.append("tenant-token-1234")
        >>> scrub_text("sent tenant-token-1234")
        'sent ***'
        >>> planted.clear()
    """
    global _sources
    with _sources_lock:
        if source not in _sources:
            _sources = (*_sources, source)


def is_sensitive_key(key: str) -> bool:
    """Whether a mapping key names a secret (password, token, api_key, authorization, dsn, ...).

    Token counts such as `max_tokens` or `prompt_tokens` are not secrets, nor are they under a
    dotted namespace (a span's `gen_ai.usage.input_tokens`).

    Example:
        >>> is_sensitive_key("X-Api-Key"), is_sensitive_key("max_tokens"), is_sensitive_key("name")
        (True, False, False)
        >>> is_sensitive_key("gen_ai.usage.output_tokens"), is_sensitive_key("auth.api_token")
        (False, True)
    """
    if _TOKEN_COUNT_KEY.fullmatch(key.rsplit(".", 1)[-1]):
        return False
    return _SENSITIVE_KEY.search(key) is not None


def _redact_key_value(match: re.Match[str]) -> str:
    if not is_sensitive_key(match.group("key")):
        return match.group(0)
    scheme = match.group("scheme") or ""
    return f"{match.group('key')}{match.group('sep')}{scheme}{REDACTED}"


@functools.lru_cache(maxsize=32)
def _literal_secrets(candidates: tuple[str, ...]) -> tuple[str, ...]:
    unique = {c for c in candidates if len(c) >= _MIN_LITERAL_SECRET_LENGTH}
    return tuple(sorted(unique, key=len, reverse=True))


def _configured_secrets() -> tuple[str, ...]:
    """The literal secret values in force: settings' API key, DSN and database password, and
    the values of every registered source (block secrets, the installed Sentry DSN)."""
    candidates: list[str] = []
    try:
        settings = get_current_settings()
    except Exception:  # an invalid environment must not break redaction
        settings = None
    if settings is not None:
        if settings.api_key is not None:
            candidates.append(settings.api_key.get_secret_value())
        if settings.sentry_dsn is not None:
            candidates.append(settings.sentry_dsn.get_secret_value())
        try:
            password = urlsplit(settings.resolved_database_url()).password
        except ValueError:
            password = None
        if password:
            candidates.extend((password, unquote(password)))
    for source in _sources:
        candidates.extend(secret for secret in source() if secret)
    return _literal_secrets(tuple(candidates))


def _scrub_text(text: str, literals: tuple[str, ...]) -> str:
    if not text:
        return text
    for secret in literals:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _BEARER.sub(lambda m: f"{m.group('scheme')} {REDACTED}", text)
    text = _OPENAI_KEY.sub(f"sk-{REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _KEY_VALUE.sub(_redact_key_value, text)
    return _EMAIL.sub(EMAIL_PLACEHOLDER, text)


def scrub_text(text: str) -> str:
    """Redact secrets and e-mail addresses in a string.

    Replaced: the secrets configured in settings (API key, database password, Sentry DSN) and
    those of the registered sources (loaded blocks), URL credentials
    (`scheme://user:pw@host` -> `scheme://***@host`), bearer tokens, OpenAI-style keys
    (`sk-...`, `sk-proj-...`), JWTs, `password=...`-style pairs (`api_key`, `token`, `secret`,
    ...), and e-mail addresses (`[email]`). Runs in linear time: safe on large artifacts.

    Args:
        text: Any text: an exception message, a log line, an artifact.

    Returns:
        The text with every secret replaced by `***`.

    Example:
        >>> scrub_text("postgresql://app:s3cret@db/prod; got Bearer abc.def from x@y.io")
        'postgresql://***@db/prod; got Bearer *** from [email]'
    """
    return _scrub_text(text, _configured_secrets())


def scrub_error(exc: BaseException, width: int = 2000) -> str:
    """An error as `Type: message`, scrubbed like `scrub_text` and cut to `width` characters.

    Example:
        >>> scrub_error(ValueError("no route to postgresql://app:pw@db/prod"))
        'ValueError: no route to postgresql://***@db/prod'
    """
    return scrub_text(f"{type(exc).__name__}: {exc}")[:width]


def _scrub_value(value: Any, literals: tuple[str, ...], depth: int = 0) -> Any:
    if isinstance(value, str):
        return _scrub_text(value, literals)
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        scrubbed: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                if is_sensitive_key(key) and item is not None and not isinstance(item, bool):
                    scrubbed[_scrub_text(key, literals)] = REDACTED
                    continue
                key = _scrub_text(key, literals)
            scrubbed[key] = _scrub_value(item, literals, depth + 1)
        return scrubbed
    if isinstance(value, list):
        return [_scrub_value(item, literals, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(_scrub_value(item, literals, depth + 1) for item in value)
    if isinstance(value, bytes | bytearray):
        return _scrub_text(bytes(value).decode("utf-8", errors="replace"), literals)
    return value


def scrub_value(value: Any) -> Any:
    """A scrubbed copy of JSON-like data: every string through `scrub_text`, and the values under
    secret-looking keys (`password`, `token`, `api_key`, `authorization`, `dsn`, ...) replaced
    whole.

    Mappings become dicts; lists, tuples and bytes are walked (bytes come back as text); other
    values are returned as they are, as is anything nested more than 64 levels deep.

    Args:
        value: A string, mapping, list, tuple, bytes, or any other value.

    Example:
        >>> scrub_value({"api_key": "abc123", "note": ["x@y.io", 3]})
        {'api_key': '***', 'note': ['[email]', 3]}
    """
    return _scrub_value(value, _configured_secrets())
