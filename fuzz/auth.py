"""image/auth.py: WWW-Authenticate challenges (any header a registry sends) and auth.json files (any file on the
client's disk). Nothing may raise: parse_challenge answers a Challenge or None, load_all skips what it cannot
read. A challenge's parameters round-trip: quoting them again and parsing gives the same."""

from __future__ import annotations

import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["hypercontainer.image.auth"]):
    from hypercontainer.image.auth import Credentials, forget, load_all, parse_challenge, store

AUTH_FILE = Path(tempfile.mkdtemp(prefix="hc-fuzz-auth-")) / "auth.json"


def test_one(data: bytes) -> None:
    """data: the header, NUL, the registry's name, NUL, the auth.json file."""
    head, _, rest = data.partition(b"\0")
    name, _, file = rest.partition(b"\0")
    header = head.decode("latin-1")  # what httpx makes of a header's bytes
    ch = parse_challenge(header)
    if ch is not None:
        assert ch.scheme and ch.scheme == ch.scheme.lower() and " " not in ch.scheme
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in ch.params.items())
        clean = {k: v for k, v in ch.params.items() if '"' not in v}
        again = parse_challenge(f"{ch.scheme} " + ",".join(f'{k}="{v}"' for k, v in clean.items()))
        assert again is not None and again.params == clean, (ch, again)
    registry = name.decode("utf-8", "replace")
    AUTH_FILE.write_bytes(file)
    for reg, creds in load_all(AUTH_FILE).items():
        assert isinstance(reg, str) and isinstance(creds, Credentials)
        creds.basic()
    # `hyperctl login` and `logout` on whatever file is there: the login is kept, the logout forgets it
    store(registry, Credentials("user", "pass:word"), AUTH_FILE)
    assert load_all(AUTH_FILE)[registry] == Credentials("user", "pass:word")
    assert forget(registry, AUTH_FILE)
    assert registry not in load_all(AUTH_FILE)
