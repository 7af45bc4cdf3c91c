"""Moved to hypercontainer.client.tls (the library owns the connection code); kept for old imports."""

from ..client.tls import client_context, failure

__all__ = ["client_context", "failure"]
