"""hyperctl's verb table (commands are imported lazily) matches the commands its modules define."""

from __future__ import annotations

import importlib

from hypercontainer.cli.hyperctl import (
    VERBS,
    contexts,
    copy,
    images,
    info,
    networks,
    pods,
    run,
    stats,
    system,
    tenants,
    top,
    volumes,
)


def test_every_verb_maps_to_its_command_and_back() -> None:
    for verb, (module, attr) in VERBS.items():
        assert getattr(importlib.import_module(f"hypercontainer.cli.hyperctl.{module}"), attr).name == verb
    modules = (run, pods, images, info, contexts, tenants, networks, volumes, system, stats, copy, top)
    defined = {c.name for m in modules for c in m.COMMANDS}
    assert defined == set(VERBS)


def test_ps_filters_match_as_docker() -> None:
    p = {"id": "abcdef0123", "name": "web-1", "state": "failed", "image": "busybox:latest",
         "spec": {"labels": {"tier": "web", "env": "prod"}}, "containers": [{"image": "sha256:1"}]}
    yes = [["name=web"], ["id=abc"], ["status=exited"], ["ancestor=busybox"], ["ancestor=busybox:latest"],
           ["label=tier"], ["label=tier=web", "label=env=prod"], ["name=nope", "name=web-"],
           ["status=running", "status=exited", "label=env"]]
    no = [["name=db"], ["id=bcd"], ["status=running"], ["ancestor=alpine"], ["label=tier=db"],
          ["label=tier=web", "label=env=dev"], ["name=web", "status=paused"]]
    for f in yes:
        assert pods.matches(p, pods.parse_filters(tuple(f))), f
    for f in no:
        assert not pods.matches(p, pods.parse_filters(tuple(f))), f


def test_ps_templates() -> None:
    values = {k: k.lower() for k in pods.FIELDS}
    assert pods.render("{{.ID}}\t{{ .Names }}|{{.Labels}}", values) == "id\tnames|labels"
    pods.check_template("{{.ID}} {{.Status}}", pods.FIELDS)  # fine: returns


def test_env_file_and_add_host(tmp_path, monkeypatch) -> None:
    f = tmp_path / "env"
    f.write_text("# c\n\nA=1\n  B=x=y \nHOSTY\nUNSET_HERE\nA=2\n")
    monkeypatch.setenv("HOSTY", "h")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    assert run.env_file_lines(str(f)) == ["A=1", "B=x=y ", "HOSTY=h", "A=2"]
    assert run.env_of(("A=3", "C=4"), (str(f),)) == ("A=3", "B=x=y ", "HOSTY=h", "C=4")
    assert run.parse_hosts(("db:10.0.0.1", "v6:fd00::1", "x=::1")) == [
        {"hostname": "db", "ip": "10.0.0.1"}, {"hostname": "v6", "ip": "fd00::1"}, {"hostname": "x", "ip": "::1"}]
    assert run.parse_labels(("a=b=c", "k")) == {"a": "b=c", "k": ""}
