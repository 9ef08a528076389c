"""Session tokens."""

import hashlib


def issue(user: str, secret: str = "s3cret") -> str:
    """A stable token for `user`."""
    return hashlib.sha256(f"{user}:{secret}".encode()).hexdigest()[:16]


def verify(user: str, token: str, secret: str = "s3cret") -> bool:
    return issue(user, secret) == token
