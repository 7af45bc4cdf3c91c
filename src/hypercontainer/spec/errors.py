"""Turning pydantic's validation errors into one message that names each bad field."""

from __future__ import annotations

from pydantic import ValidationError

from ..errors import InvalidArgument


def invalid_spec(e: ValidationError) -> InvalidArgument:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return InvalidArgument("invalid pod spec: " + "; ".join(parts))
