"""Tests of outgoing mail."""

import mailer


def test_render() -> None:
    assert mailer.render("Hi {name}", name="Ada") == "Hi Ada"


def test_render_two_fields() -> None:
    assert mailer.render("{a}-{b}", a="x", b="y") == "x-y"


def test_smtp_port_default() -> None:
    assert mailer.smtp_port() > 0


def test_render_empty() -> None:
    assert mailer.render("") == ""


def test_send_welcome_mail() -> None:
    mailer.send("ada@example.com", "welcome")
