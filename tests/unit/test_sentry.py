"""Sentry without a server: no DSN sends nothing, a malformed DSN is a configuration error, secret
scrubbing of text and events, and parsing an envelope. Events through a local receiver and
Prefect's hooks: tests/integration/test_sentry.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agents.errors import ConfigurationError
from agents.observe import (
    capture_failure,
    init_sentry,
    scrub_event,
    scrub_text,
    shutdown_sentry,
)
from agents.settings import temporary_settings
from agents.testing.sentry import parse_envelope


@pytest.fixture
def no_secrets_in_settings() -> Iterator[None]:
    """Settings without a DSN, API key or database password from the developer's environment."""
    with temporary_settings(sentry_dsn=None, api_key=None, database_url="sqlite://"):
        yield


def _raise(exc: BaseException) -> BaseException:
    """Raise and catch `exc` so it carries a traceback, as a real failure does."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_capture_without_dsn_does_nothing(no_secrets_in_settings: None) -> None:
    shutdown_sentry(timeout=1.0)

    assert init_sentry() is False
    assert capture_failure(_raise(ValueError("x")), agent="a") is None


def test_a_malformed_dsn_is_a_configuration_error(no_secrets_in_settings: None) -> None:
    with pytest.raises(ConfigurationError) as raised:
        init_sentry("nonsense-dsn-s3cr3t", force=True)
    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-proj-AbCdEfGhIjKlMnOpQrStUv_wx-yz", "key sk-***"),
        ("sk-" + "abcdefghijklmnopqrstuvwxyz012345", "sk-***"),  # split: no key-like literal
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
        ("Authorization: Basic dXNlcjpw", "Authorization: Basic ***"),
        ("got bearer eyJhbGciOi.J9.abc", "got bearer ***"),
        ("https://user:pa55@o1.ingest.sentry.io/42", "https://***@o1.ingest.sentry.io/42"),
        ("https://0123abcd@o1.ingest.sentry.io/42", "https://***@o1.ingest.sentry.io/42"),
        ("postgresql+psycopg://app:p%40ss@db:5432/x", "postgresql+psycopg://***@db:5432/x"),
        ("password=hunter2 user=bob", "password=*** user=bob"),
        ("API_KEY: 'abc def'", "API_KEY: ***"),
        ('{"client_secret": "xyz"}', '{"client_secret": ***}'),
        ("max_tokens=512 token=abc", "max_tokens=512 token=***"),
        ("mail bob.smith+x@example.co.uk now", "mail [email] now"),
        ("nothing secret here: task-1 done", "nothing secret here: task-1 done"),
    ],
)
def test_scrub_text(text: str, expected: str, no_secrets_in_settings: None) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    ["a." * 50_000, "a-" * 50_000, "x@" + "a." * 50_000, "a=" * 50_000],
    ids=["dots", "dashes", "email-domain", "equals"],
)
def test_scrub_text_is_linear_on_large_inputs(text: str, no_secrets_in_settings: None) -> None:
    started = time.perf_counter()
    scrub_text(text)
    assert time.perf_counter() - started < 1.0


def test_scrub_text_removes_configured_secrets() -> None:
    with temporary_settings(
        api_key="plainkey42",
        database_url="postgresql://app:dbpass99@db/prod",
        sentry_dsn="https://pubkey77@sentry.example/3",
    ):
        text = scrub_text("plainkey42 / dbpass99 / https://pubkey77@sentry.example/3")
    assert "plainkey42" not in text and "dbpass99" not in text and "pubkey77" not in text


def test_scrub_event_walks_everything(no_secrets_in_settings: None) -> None:
    event: Any = {
        "tags": {"tenant": "acme", "auth_token": "t0k"},
        "contexts": {"db": {"Credentials": {"user": "u", "pw": "p"}, "dsn": "x"}},
        "request": {"headers": {"Authorization": "Basic dXNlcjpw", "Accept": "json"}},
        "breadcrumbs": {"values": [{"message": "login bob@example.com secret=s3"}]},
        "usage": {"prompt_tokens": 12},
        "flag": {"token": True},
    }
    assert scrub_event(event, {}) == {
        "tags": {"tenant": "acme", "auth_token": "***"},
        "contexts": {"db": {"Credentials": "***", "dsn": "***"}},
        "request": {"headers": {"Authorization": "***", "Accept": "json"}},
        "breadcrumbs": {"values": [{"message": "login [email] secret=***"}]},
        "usage": {"prompt_tokens": 12},
        "flag": {"token": True},
    }


def test_parse_envelope_honours_item_lengths() -> None:
    payload = b'{"message":"a\\nb"}'
    body = (
        b'{"event_id":"e1"}\n'
        + json.dumps({"type": "event", "length": len(payload)}).encode()
        + b"\n"
        + payload
        + b'\n{"type":"attachment","length":3}\nx\ny\n{"type":"session"}\n{"sid":"1"}\n'
    )
    envelope = parse_envelope(body, "1")
    assert envelope.headers == {"event_id": "e1"}
    assert [item.type for item in envelope.items] == ["event", "attachment", "session"]
    assert envelope.items[0].json == {"message": "a\nb"}
    assert envelope.items[1].payload == b"x\ny"
    assert envelope.items[2].json == {"sid": "1"}
