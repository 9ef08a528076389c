"""Test helpers: in-process stand-ins for the services Stalwart talks to, and their server.

`agents.testing.loopback.LoopbackServer` serves an ASGI app on a loopback address from a
background thread; the bundled model server (`agents.modelserver`) and the reference agents'
simulated outside systems run in it. Each other submodule owns one fake (for example
`agents.testing.sentry.SentryReceiver`). Apart from the bundled model server, nothing outside
tests imports from here.
"""
