"""hyperd's typed configuration: flags over HYPERCONTAINER_* defaults, one place that checks them, and the
HyperdConfig reaching the components it configures (no VMs)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
from pathlib import Path

import pytest
from click.testing import CliRunner

from hypercontainer.config import Paths, environment
from hypercontainer.daemon import config as dconfig
from hypercontainer.daemon.config import ENVVARS, ConfigError, HyperdConfig, build, command, flag
from hypercontainer.daemon.main import assemble, main
from hypercontainer.errors import VMError
from hypercontainer.guest import assets as guest_assets
from hypercontainer.guest.kernel import KernelError
from hypercontainer.vm import accel, uids

USER = min((u for u in pwd.getpwall() if 0 < u.pw_uid < 2**31 - 20), key=lambda u: u.pw_uid)  # a real user

# Every HYPERCONTAINER_* hyperd reads: cleared for each CliRunner call so the host's (or the test run's) settings
# do not leak in.
CLEAR = dict.fromkeys(ENVVARS.values())


def parse(args: list[str], **env: str) -> HyperdConfig:
    """hyperd's real command line parsing, with the config handed to a list instead of serve()."""
    got: list[HyperdConfig] = []
    r = CliRunner().invoke(command(got.append), args, env={**CLEAR, **env})
    assert r.exit_code == 0, r.output
    assert len(got) == 1
    return got[0]


def refused(args: list[str], **env: str) -> str:
    """The usage error hyperd prints for a bad setting (exit status 2, serve() never reached)."""
    got: list[HyperdConfig] = []
    r = CliRunner().invoke(command(got.append), args, env={**CLEAR, **env})
    assert r.exit_code == 2 and not got, r.output
    return r.output


def test_defaults_are_the_documented_ones() -> None:
    cfg = parse([])
    assert cfg == build() == HyperdConfig()
    assert cfg.paths == Paths(Path("/var/lib/hypercontainer"), Path("/run/hypercontainer"),
                              Path("/var/lib/hypercontainer/assets"), Path("/run/hypercontainer/hyperd.sock"))
    assert (cfg.live_restore, cfg.network, cfg.bridge, cfg.subnet, cfg.boot, cfg.pool) == \
        (True, "auto", "hyper0", ipaddress.IPv4Network("10.77.0.0/16"), "pool", None)
    assert (cfg.vmm_uids, cfg.storage_size, cfg.insecure_registries, cfg.accel, cfg.kernel, cfg.pull_parallel) == \
        ((0x70000000, 0x7000FFFF), 10 << 30, frozenset(), "auto", "auto", 4)
    assert cfg.forced_accel is None


def test_environment_variables_are_the_defaults(tmp_path: Path) -> None:
    cfg = parse([], HYPERCONTAINER_ROOT=str(tmp_path / "state"), HYPERCONTAINER_RUN=str(tmp_path / "run"),
                HYPERCONTAINER_LIVE_RESTORE="0", HYPERCONTAINER_NETWORK="user", HYPERCONTAINER_BRIDGE="hyt0",
                HYPERCONTAINER_SUBNET="10.99.0.0/24", HYPERCONTAINER_BOOT="pool", HYPERCONTAINER_POOL="2",
                HYPERCONTAINER_VMM_UIDS="1879113760-1879113775", HYPERCONTAINER_STORAGE_SIZE="64M",
                HYPERCONTAINER_INSECURE_REGISTRIES="reg.test:5000,,10.0.0.2:80", HYPERCONTAINER_ACCEL="tcg",
                HYPERCONTAINER_KERNEL="distro", HYPERCONTAINER_PULL_PARALLEL="2", HYPERCONTAINER_DEBUG="1")
    assert cfg == HyperdConfig(
        paths=Paths(tmp_path / "state", tmp_path / "run", tmp_path / "state" / "assets",
                    tmp_path / "run" / "hyperd.sock"),
        live_restore=False, network="user", bridge="hyt0", subnet=ipaddress.IPv4Network("10.99.0.0/24"),
        boot="pool", pool=2, vmm_uids=(1879113760, 1879113775), storage_size=64 << 20,
        insecure_registries=frozenset({"reg.test:5000", "10.0.0.2:80"}), accel="tcg", kernel="distro",
        pull_parallel=2, debug=True)
    assert cfg.forced_accel == "tcg"


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    env = {"HYPERCONTAINER_ROOT": "/nowhere/root", "HYPERCONTAINER_SOCKET": "/nowhere/s.sock",
           "HYPERCONTAINER_ASSETS": "/nowhere/assets", "HYPERCONTAINER_LIVE_RESTORE": "0",
           "HYPERCONTAINER_BOOT": "pool", "HYPERCONTAINER_POOL": "3", "HYPERCONTAINER_SUBNET": "10.1.0.0/16",
           "HYPERCONTAINER_STORAGE_SIZE": "1G", "HYPERCONTAINER_INSECURE_REGISTRIES": "env.test:1",
           "HYPERCONTAINER_ACCEL": "kvm", "HYPERCONTAINER_PULL_PARALLEL": "8"}
    cfg = parse(["--root", str(tmp_path), "--socket", str(tmp_path / "h.sock"), "--assets", str(tmp_path / "a"),
                 "--live-restore", "--boot", "cold", "--pool", "0", "--subnet", "10.2.0.0/16",
                 "--storage-size", "0", "--insecure-registry", "a.test:1", "--insecure-registry", "b.test",
                 "--accel", "tcg", "--pull-parallel", "1"], **env)
    assert cfg.paths == Paths(tmp_path, Path("/run/hypercontainer"), tmp_path / "a", tmp_path / "h.sock")
    assert (cfg.live_restore, cfg.boot, cfg.pool, cfg.subnet, cfg.storage_size) == \
        (True, "cold", 0, ipaddress.IPv4Network("10.2.0.0/16"), 0)
    assert (cfg.insecure_registries, cfg.accel, cfg.pull_parallel) == (frozenset({"a.test:1", "b.test"}), "tcg", 1)
    # a flag left out still takes its variable; an empty variable counts as unset
    assert parse(["--boot", "cold"], HYPERCONTAINER_POOL="5").pool == 5
    assert parse([], HYPERCONTAINER_BOOT="", HYPERCONTAINER_SUBNET="").boot == "pool"
    # warm by default: the pool's size is hyperd's to choose unless given
    assert parse([], HYPERCONTAINER_POOL="").pool is None and parse(["--pool", "auto"]).pool is None


def test_the_config_is_read_once_not_from_the_environment_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """build() takes only its arguments: a variable set afterwards (or around it) changes nothing."""
    for name in ENVVARS.values():
        monkeypatch.setenv(name, "garbage")
    cfg = build(boot="cold")
    assert cfg == HyperdConfig(boot="cold")


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--subnet", "10.0.0.0/33"], {}, "Invalid value for '--subnet': '10.0.0.0/33' is not an IPv4 network"),
    (["--subnet", "10.0.0.1/8"], {}, "has host bits set"),
    ([], {"HYPERCONTAINER_SUBNET": "10.0.0.0/30"},
     "Invalid value for '--subnet' (env var: 'HYPERCONTAINER_SUBNET'): 10.0.0.0/30 is too small for pods"),
    (["--storage-size", "lots"], {}, "Invalid value for '--storage-size': storage size 'lots': expected a number"),
    ([], {"HYPERCONTAINER_STORAGE_SIZE": "16M"},
     "'--storage-size' (env var: 'HYPERCONTAINER_STORAGE_SIZE'): storage size '16M': at least 32M"),
    (["--vmm-uids", "12"], {}, "Invalid value for '--vmm-uids': VMM uid range '12' is not FIRST-LAST"),
    (["--vmm-uids", "1879113760-1879113765"], {}, "need 16 or more ids"),
    ([], {"HYPERCONTAINER_VMM_UIDS": f"{USER.pw_uid}-{USER.pw_uid + 15}"},
     f"'--vmm-uids' (env var: 'HYPERCONTAINER_VMM_UIDS'): the VMM uid range {USER.pw_uid}-{USER.pw_uid + 15} holds "
     f"user {USER.pw_name} ({USER.pw_uid})"),
    (["--pool", "65"], {}, "Invalid value for '--pool' (env var: 'HYPERCONTAINER_POOL'): 65 is not in the range"),
    ([], {"HYPERCONTAINER_POOL": "many"},
     "Invalid value for '--pool' (env var: 'HYPERCONTAINER_POOL'): 'many' is neither a whole number nor auto"),
    (["--boot", "warm"], {}, "'--boot' (env var: 'HYPERCONTAINER_BOOT'): 'warm' is not one of 'cold', 'template'"),
    ([], {"HYPERCONTAINER_NETWORK": "host"}, "Invalid value for '--network' (env var: 'HYPERCONTAINER_NETWORK')"),
    (["--bridge", "a-bridge-name-too-long"], {}, "Invalid value for '--bridge': 'a-bridge-name-too-long' is not an "
                                                  "interface name"),
    (["--insecure-registry", "http://reg.test/v2"], {},
     "Invalid value for '--insecure-registry': 'http://reg.test/v2' is not HOST[:PORT]"),
    (["--accel", "hvf"], {}, "Invalid value for '--accel'"),
    ([], {"HYPERCONTAINER_KERNEL": "mine"}, "Invalid value for '--kernel' (env var: 'HYPERCONTAINER_KERNEL')"),
    (["--pull-parallel", "0"], {}, "Invalid value for '--pull-parallel' (env var: 'HYPERCONTAINER_PULL_PARALLEL'): 0 "
                                   "is not in the range 1<=x<=64"),
    (["--socket", "/" + "s" * 120], {}, "Invalid value for '--socket': /sss"),
    ([], {"HYPERCONTAINER_LIVE_RESTORE": "perhaps"}, "Invalid value for '--live-restore"),
])
def test_each_bad_setting_is_refused_naming_its_flag(args: list[str], env: dict[str, str], message: str) -> None:
    """Checked in build(): the variable is named when the value came from it. Checked by click's own types
    (choices, ranges): click names the variable in any case."""
    out = " ".join(refused(args, **env).split())  # click wraps long lines
    assert message in out, out


@pytest.mark.parametrize(("kw", "message"), [
    ({"subnet": "nope"}, "--subnet: 'nope' is not an IPv4 network"),
    ({"storage_size": "lots"}, "--storage-size: storage size 'lots'"),
    ({"vmm_uids": "1-2"}, "--vmm-uids: VMM uid range '1-2': need 16 or more ids"),
    ({"pool": 99}, "--pool: 99 is not within 0..64"),
    ({"pool": "x"}, "--pool: 'x' is not a whole number"),
    ({"boot": "warm"}, "--boot: 'warm' is not one of cold, template, pool"),
    ({"network": "host"}, "--network: 'host' is not one of auto, bridge, user, none"),
    ({"accel": "hvf"}, "--accel: 'hvf' is not one of auto, kvm, tcg"),
    ({"kernel": "mine"}, "--kernel: 'mine' is not one of auto, own, distro"),
    ({"pull_parallel": 0}, "--pull-parallel: 0 is not within 1..64"),
    ({"run": Path("/" + "r" * 100)}, "--socket: /rrr"),
])
def test_build_checks_what_click_does_not(kw: dict[str, object], message: str) -> None:
    """build() is the one place that checks: called directly (no click types in front), it refuses the same."""
    with pytest.raises(ConfigError) as e:
        build(**kw)  # type: ignore[arg-type]
    assert str(e.value).startswith(message), str(e.value)
    assert flag(e.value.name) == message.split(":")[0]


def test_help_shows_every_flag_with_its_variable_and_default() -> None:
    r = CliRunner().invoke(main, ["--help"], env=CLEAR, terminal_width=200)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for name, envvar in ENVVARS.items():
        if name == "crash_at":  # a hidden flag: tests only
            assert flag(name) not in text
            continue
        assert flag(name) in text and f"env var: {envvar}" in text, name
    for default in ("default: /var/lib/hypercontainer]", "default: /run/hypercontainer]", "<run>/hyperd.sock",
                    "<root>/assets", "default: hyper0]", "default: 10.77.0.0/16]", "default: pool]",
                    "--pool N|auto", "default: 1879048192-1879113727]", "default: 10G]", "default: auto]",
                    "default: 4; 1<=x<=64]", "--live-restore / --no-live-restore"):
        assert default in text, default


def test_the_config_reaches_the_components(tmp_path: Path) -> None:
    """The parsed config (from flags and variables) configures network, pool, pod manager and puller."""
    (tmp_path / "vmlinux").write_bytes(b"")
    (tmp_path / "initrd.cpio").write_bytes(b"")
    cfg = parse(["--root", str(tmp_path / "state"), "--run", str(tmp_path / "run"), "--network", "none",
                 "--insecure-registry", "reg.test:5000"],
                HYPERCONTAINER_BOOT="pool", HYPERCONTAINER_POOL="3", HYPERCONTAINER_LIVE_RESTORE="0",
                HYPERCONTAINER_STORAGE_SIZE="2G", HYPERCONTAINER_SUBNET="10.98.0.0/24", HYPERCONTAINER_BRIDGE="hyt1",
                HYPERCONTAINER_PULL_PARALLEL="7")
    cfg.paths.ensure()
    a = guest_assets.Assets(tmp_path / "vmlinux", tmp_path / "initrd.cpio", "6.1-test", "agent", "digest")
    parts = assemble(cfg, a, accel.Accel("tcg", "test"))
    try:
        assert (parts.network.requested, parts.network.bridge.name, str(parts.network.bridge.subnet)) == \
            ("none", "hyt1", "10.98.0.0/24")
        assert (parts.pool.size, parts.pool.rundir) == (3, tmp_path / "run" / "pool")
        m = parts.manager
        assert (m.boot, m.pool, m.storage_size, m.live_restore) == ("pool", parts.pool, 2 << 30, False)
        assert (m.poddir, m.rundir) == (tmp_path / "state" / "pods", tmp_path / "run" / "pods")
        assert (parts.templates.accel, parts.templates.home) == ("tcg", cfg.paths.assets / "templates")
        assert (parts.puller.insecure, parts.puller.parallel) == ({"reg.test:5000"}, 7)
        assert (tmp_path / "state" / "hyperd.db").exists()
    finally:
        parts.db.close()
    # hyperd's own pool (no --pool) only where its policy takes from it
    for boot, size in (("pool", 1), ("template", 0)):
        cfg = parse(["--root", str(tmp_path / boot), "--run", str(tmp_path / f"run-{boot}"), "--network", "none",
                     "--boot", boot])
        cfg.paths.ensure()
        parts = assemble(cfg, a, accel.Accel("tcg", "test"))
        parts.db.close()
        assert (parts.pool.auto, parts.pool.size) == (boot == "pool", size), boot


def test_the_accelerator_choice_is_passed_not_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--accel tcg skips the probe (the kernel given does not exist: a probe would fail); the variable seen by
    the process afterwards is not looked at."""
    monkeypatch.setenv("HYPERCONTAINER_ACCEL", "kvm")
    cfg = build(accel="tcg")
    got = asyncio.run(accel.detect(tmp_path / "no-kernel", tmp_path / "no-initrd", "d", tmp_path / "accel.json",
                                   cfg.forced_accel))
    assert got.name == "tcg" and "--accel" in got.reason and not (tmp_path / "accel.json").exists()
    with pytest.raises(VMError, match="kvm or tcg, not 'hvf'"):
        asyncio.run(accel.detect(tmp_path / "k", tmp_path / "i", "d", tmp_path / "accel.json", "hvf"))


def test_the_kernel_choice_is_passed_not_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYPERCONTAINER_KERNEL", "distro")  # ignored below hyperd's config
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KernelError, match="no guest kernel of our own"):
        guest_assets.choose_kernel(empty, build(kernel="own").kernel)
    own = tmp_path / "cache" / "kernel-own-test"
    own.mkdir(parents=True)
    (own / "release").write_text("6.1.0-hc\n")
    (own / "vmlinux").write_bytes(b"")
    k = guest_assets.choose_kernel(tmp_path / "cache", build(kernel="auto").kernel)
    assert (k.release, k.image) == ("6.1.0-hc", own / "vmlinux")
    with pytest.raises(Exception, match="guest kernel 'mine'"):
        guest_assets.choose_kernel(tmp_path / "cache", "mine")


@pytest.mark.skipif(os.geteuid() != 0, reason="VMM uid leases live in /run/hypercontainer-vmm (root's)")
def test_the_vmm_uid_range_is_the_configured_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """hyperd sets its --vmm-uids range once (serve: uids.use_range); claims (confine.qemu's) take from it,
    whatever HYPERCONTAINER_VMM_UIDS says by then."""
    cfg = parse(["--vmm-uids", "1879113776-1879113791"])
    monkeypatch.setenv("HYPERCONTAINER_VMM_UIDS", "1879113792-1879113807")
    monkeypatch.setattr(uids, "_range", uids.uid_range())  # restored after the test
    uids.use_range(cfg.vmm_uids)
    claimed = [uids.claim() for _ in range(16)]
    try:
        assert sorted(claimed) == list(range(1879113776, 1879113792))
        assert uids.uid_range() == (1879113776, 1879113791)
    finally:
        for u in claimed:
            uids.release(u)


def test_other_programs_read_the_variables_in_one_place(tmp_path: Path) -> None:
    """hyperctl, runv and `make assets` take HYPERCONTAINER_* through config.environment()."""
    env = environment({"HYPERCONTAINER_ROOT": str(tmp_path), "HYPERCONTAINER_RUN": "", "HYPERCONTAINER_KERNEL": "own",
                       "HYPERCONTAINER_ACCEL": "tcg", "HYPERCONTAINER_VMM_UIDS": "1-2"})
    assert env.paths == Paths(tmp_path, Path("/run/hypercontainer"), tmp_path / "assets",
                              Path("/run/hypercontainer/hyperd.sock"))
    assert (env.kernel, env.accel, env.vmm_uids) == ("own", "tcg", "1-2")
    assert environment({}).paths == HyperdConfig().paths  # the same defaults as hyperd's flags
    assert dconfig.ENVVARS["socket"] == "HYPERCONTAINER_SOCKET"
