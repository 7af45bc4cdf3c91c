"""Moved to hypercontainer.client.rest (the library owns the connection code); kept for old imports."""

from ..client.rest import Rest, UnixConnection, body_of, connection, url

__all__ = ["Rest", "UnixConnection", "body_of", "connection", "url"]
