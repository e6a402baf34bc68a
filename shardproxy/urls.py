"""Database URLs as logs and messages show them: with the password hidden.

The URL is shown as it was given, not with the driver the store picks for it
(`store.database.driver_url`): a message names the database the user configured,
in the user's own words. Only a URL with a password is rewritten; any other,
a SQLite path included, comes back unchanged.

SQLAlchemy parses the URL, so a password is found where the store's engines find
it, percent-encoded '@', ':' or '/' included. It is imported on the first call,
not with this module: the command line imports this module and does not need
SQLAlchemy to parse its flags.
"""

from __future__ import annotations

HIDDEN = "***"


def masked_url(url: str) -> str:
    """The URL for logs and messages, with its password replaced by `***`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # Unparsable (a password with a raw '@' and ':' can make it so): where the
        # password ends is unknown, so nothing after the scheme is shown.
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://{HIDDEN}" if sep else HIDDEN
    if parsed.password is None:
        return url
    host = parsed.host
    if host is not None and "@" in host:
        # A raw '@' in the password: SQLAlchemy ends the password at the first '@'
        # and reads the rest of it as part of the host; hide that rest too.
        parsed = parsed.set(host=host.rpartition("@")[2])
    return parsed.render_as_string(hide_password=True)
