"""spec/kube.py: a Kubernetes v1 Pod manifest (JSON or YAML) mapped to our spec and validated, as
PodManager.create does. Allowed: InvalidArgument, pydantic's ValidationError."""

from __future__ import annotations

import json

import atheris
import yaml

with atheris.instrument_imports(include=["hypercontainer.spec"]):
    from hypercontainer.errors import InvalidArgument
    from hypercontainer.spec.kube import from_kube, is_kube_pod

from fuzz.pod_spec import check


def test_one(data: bytes) -> None:
    try:
        doc = json.loads(data) if data[:1] == b"{" else yaml.safe_load(data)
    except (ValueError, RecursionError, yaml.YAMLError):
        return
    if not isinstance(doc, dict):
        return
    doc.setdefault("apiVersion", "v1")
    doc.setdefault("kind", "Pod")
    if not is_kube_pod(doc):
        return
    try:
        ours, ignored = from_kube(doc)
    except InvalidArgument:
        return
    assert all(isinstance(i, str) for i in ignored)
    check(ours)
