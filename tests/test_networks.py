"""network/networks.py: named networks (a tenant's bridge and /24), their names per owner, their subnets and bridge
names unique, the pool's end. The bridges and rules themselves are exercised with real VMs in test_tenants.py."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from hypercontainer.errors import Conflict, InvalidArgument, NotFound
from hypercontainer.network import networks as nets
from hypercontainer.network.networks import ADMIN, Networks


def test_each_owner_has_its_own_names_and_each_network_its_own_subnet(tmp_path: Path) -> None:
    n = Networks(tmp_path / "db")
    a = n.create("alice", "default")
    b = n.create("bob", "default")  # the same name, another owner
    admin = n.create(ADMIN, "lab")
    assert len({a.subnet, b.subnet, admin.subnet}) == 3 and len({a.bridge, b.bridge, admin.bridge}) == 3
    assert all(r.subnet.subnet_of(nets.POOL) and r.subnet.prefixlen == 24 for r in (a, b, admin))
    assert all(r.bridge.startswith("hnet") and len(r.bridge) <= 15 for r in (a, b, admin))
    with pytest.raises(Conflict):
        n.create("alice", "default")
    assert n.ensure("alice", "default") == a
    assert [r.name for r in n.all("alice")] == ["default"] and len(n.all()) == 3
    with pytest.raises(NotFound, match="no such network: lab"):
        n.find("alice", "lab")  # the administrator's: not alice's, and said the same way as a missing one
    assert n.remove("alice", "default") == a and n.get("alice", "default") is None
    assert n.create("carol", "x").subnet == a.subnet  # a freed subnet is used again
    n.close()
    assert Networks(tmp_path / "db").get("bob", "default") == b  # kept in the database


@pytest.mark.parametrize("name", ["", "Upper", "-x", "a b", "x" * 64, "../x"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid network name"):
        Networks(tmp_path / "db").create("alice", name)


def test_the_pool_runs_out_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nets, "POOL", ipaddress.IPv4Network("10.80.0.0/23"))  # two networks' worth
    n = Networks(tmp_path / "db")
    n.create("a", "one")
    n.create("a", "two")
    with pytest.raises(InvalidArgument, match=r"no free subnet left in 10\.80\.0\.0/23"):
        n.create("a", "three")
    assert len(n.all()) == 2
