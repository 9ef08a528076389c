"""Test helpers: in-process stand-ins for the services Stalwart talks to.

Each submodule owns one fake (for example `agents.testing.sentry.SentryReceiver`); nothing here is
imported by production code.
"""
