"""hyperctl's verb table (commands are imported lazily) matches the commands its modules define."""

from __future__ import annotations

import importlib

from hypercontainer.cli.hyperctl import VERBS, contexts, images, info, networks, pods, run, tenants, volumes


def test_every_verb_maps_to_its_command_and_back() -> None:
    for verb, (module, attr) in VERBS.items():
        assert getattr(importlib.import_module(f"hypercontainer.cli.hyperctl.{module}"), attr).name == verb
    defined = {c.name for m in (run, pods, images, info, contexts, tenants, networks, volumes) for c in m.COMMANDS}
    assert defined == set(VERBS)
