"""spec/pod.py: a pod spec (JSON, as the API and `hyperctl run -f` take it) validated as PodManager.create does.

Allowed: pydantic's ValidationError (a ValueError), InvalidArgument. A valid spec must survive what the daemon
does with it next: dumping and validating again gives the same spec, and the derived values compute."""

from __future__ import annotations

import json

import atheris

with atheris.instrument_imports(include=["hypercontainer.spec"]):
    from pydantic import ValidationError

    from hypercontainer.errors import InvalidArgument
    from hypercontainer.spec.errors import invalid_spec
    from hypercontainer.spec.pod import PodSpec


def check(raw: object) -> None:
    try:
        spec = PodSpec.model_validate(raw)
    except ValidationError as e:
        assert isinstance(invalid_spec(e), InvalidArgument)
        return
    except InvalidArgument:
        return
    again = PodSpec.model_validate(spec.model_dump())
    assert again == spec, (spec, again)
    PodSpec.model_validate_json(spec.model_dump_json())
    _ = spec.network_mode, spec.network_name, spec.network_namespace
    for c in spec.containers:
        c.capabilities.mask(c.privileged)
        for f in c.files:
            f.data()


def test_one(data: bytes) -> None:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return
    check(raw)
