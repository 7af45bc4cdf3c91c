"""TLS to a remote hyperd: the context that trusts the endpoint's CA (host names checked), and what a
failure to connect means in one line."""

from __future__ import annotations

import ssl

from ..errors import HCError, Unavailable
from .endpoint import Endpoint

_HOSTNAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def client_context(ep: Endpoint) -> ssl.SSLContext:
    """TLS 1.2 or later, the server's certificate checked against the endpoint's CA (or the system's) and host."""
    try:
        if ep.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(ep.ca_file))
        else:
            ctx = ssl.create_default_context(cadata=ep.ca_pem) if ep.ca_pem else ssl.create_default_context()
    except FileNotFoundError:
        raise HCError(f"--tls-ca {ep.ca_file}: no such file") from None
    except (OSError, ssl.SSLError) as e:
        raise HCError(f"cannot use {ep.ca_name} as a CA certificate: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def failure(ep: Endpoint, e: BaseException) -> HCError:
    """What a failed connection to a TCP endpoint means, for people."""
    if isinstance(e, ssl.SSLCertVerificationError):
        if e.verify_code in _HOSTNAME_MISMATCH:
            return Unavailable(f"TLS certificate of {ep.host} does not name {ep.host}: {e.verify_message} (the "
                               "server's names are set by `hyperd tls init --san`)")
        return Unavailable(f"TLS certificate of {ep.host} not trusted by {ep.ca_name}: {e.verify_message or e}")
    if isinstance(e, ssl.SSLError):
        reason = e.reason or str(e)
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"):
            return Unavailable(f"{ep.url} does not speak TLS (a plain HTTP server?): {reason}")
        return Unavailable(f"TLS with {ep.url} failed: {reason}")
    why = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return Unavailable(f"cannot reach hyperd at {ep.url} ({why}). Is it running with --listen there?")
