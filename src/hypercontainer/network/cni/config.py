"""Network configurations: a `.conflist` (a network: `name`, `cniVersion` or 1.1's `cniVersions`, the `plugins` run
in order) or a single plugin's `.conf`/`.json` (made a list of one, as libcni does). `load(dir)` takes the first
valid file in lexical order, as libcni, containerd and CRI-O do; a malformed file is skipped with a warning that
names it and what is wrong, and when none is valid the error lists them all.

The default configuration (`10-hypercontainer.conflist` beside this file) and `install_default()`, which writes it
into a configuration directory that holds none (the Makefile's `make cni`)."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import InvalidArgument

log = logging.getLogger(__name__)

DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_NAME = "10-hypercontainer.conflist"
EXTENSIONS = (".conf", ".conflist", ".json")  # what libcni reads
# The spec versions this runtime speaks (results in all their shapes, prevResult from 0.3.0 on, CHECK and DEL's
# prevResult from 0.4.0, STATUS and GC from 1.1.0).
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")  # network names and plugin types (libcni's rule)


class ConfigError(InvalidArgument):
    """A network configuration that cannot be used; the message names the file (or source) and the problem."""


def version_key(v: str) -> tuple[int, ...]:
    """"1.0.0" -> (1, 0, 0); ValueError for anything that is not a dotted number."""
    parts = v.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(v)
    return tuple(int(p) for p in parts) + (0,) * (3 - len(parts))


def at_least(v: str, minimum: str) -> bool:
    return version_key(v) >= version_key(minimum)


@dataclass(frozen=True)
class NetworkConfig:
    """A network as the runtime runs it: its plugins' configurations in order, each as written in the file (the
    runtime adds `name`, `cniVersion`, `runtimeConfig` and `prevResult` when it calls them)."""

    name: str
    cni_version: str  # the version chosen (from cniVersions, the highest this runtime speaks)
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    disable_gc: bool = False
    source: str = ""  # the file it came from ("" when given in memory)

    @property
    def types(self) -> list[str]:
        return [str(p["type"]) for p in self.plugins]

    def to_json(self) -> dict[str, Any]:
        """The network as a conflist (what the result cache keeps, so DEL runs what ADD ran)."""
        out: dict[str, Any] = {"cniVersion": self.cni_version, "name": self.name, "plugins": list(self.plugins)}
        if self.disable_check:
            out["disableCheck"] = True
        if self.disable_gc:
            out["disableGC"] = True
        return out


def parse(data: bytes | str | Mapping[str, Any], source: str = "<config>") -> NetworkConfig:
    """A conflist, or a single plugin's conf (no `plugins` key), checked; ConfigError naming `source` and the
    problem."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"CNI network configuration {source}: {why}")

    if isinstance(data, Mapping):
        doc: Any = dict(data)
    else:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise bad(f"not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if "plugins" in doc:
        plugins = doc["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise bad("`plugins` must be a non-empty list")
    else:  # a single plugin's conf: a list of one (libcni's ConfListFromConf)
        if "type" not in doc:
            raise bad("neither `plugins` (a conflist) nor `type` (a plugin's conf)")
        plugins = [doc]
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise bad("missing `name`")
    if not _NAME.match(name):
        raise bad(f"invalid network name {name!r} (letters, digits, '_', '.', '-'; a letter or digit first)")
    version = _choose_version(doc, bad)
    checked = []
    for i, p in enumerate(plugins):
        if not isinstance(p, dict):
            raise bad(f"plugin {i} is not a JSON object")
        kind = p.get("type")
        if not isinstance(kind, str) or not kind:
            raise bad(f"plugin {i} has no `type`")
        if not _NAME.match(kind):  # it names an executable in the plugin directories: no paths
            raise bad(f"plugin {i}: invalid type {kind!r}")
        caps = p.get("capabilities", {})
        if not isinstance(caps, dict):
            raise bad(f"plugin {i} ({kind}): `capabilities` must be an object")
        checked.append(dict(p))
    for key in ("disableCheck", "disableGC"):
        if not isinstance(doc.get(key, False), bool):
            raise bad(f"`{key}` must be true or false")
    return NetworkConfig(name=name, cni_version=version, plugins=tuple(checked),
                         disable_check=bool(doc.get("disableCheck", False)),
                         disable_gc=bool(doc.get("disableGC", False)), source=source)


def _choose_version(doc: dict[str, Any], bad: Any) -> str:
    """`cniVersion`, or (CNI 1.1) the highest of `cniVersions` this runtime speaks."""
    versions = doc.get("cniVersions")
    if versions is not None:
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise bad("`cniVersions` must be a list of strings")
        ours = [v for v in versions if v in SUPPORTED_VERSIONS]
        if ours:
            return max(ours, key=version_key)
        if "cniVersion" not in doc:
            raise bad(f"none of cniVersions {versions} is spoken here ({', '.join(SUPPORTED_VERSIONS)})")
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise bad("missing `cniVersion`")
    if version not in SUPPORTED_VERSIONS:
        raise bad(f"cniVersion {version!r} is not one this runtime speaks ({', '.join(SUPPORTED_VERSIONS)})")
    return version


def load_file(path: str | Path) -> NetworkConfig:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"CNI network configuration {p}: {e.strerror}") from None
    return parse(data, str(p))


def config_files(conf_dir: str | Path) -> list[Path]:
    """The configuration files of a directory in lexical order (what libcni's ConfFiles lists)."""
    d = Path(conf_dir)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigError(f"CNI configuration directory {d}: {e.strerror}") from None
    return [d / n for n in names if n.endswith(EXTENSIONS) and (d / n).is_file()]


def load(conf_dir: str | Path = DEFAULT_CONF_DIR, name: str | None = None) -> NetworkConfig:
    """The first valid configuration in `conf_dir` in lexical order (with `name`: the first valid one of that
    network). Malformed files are skipped, each logged with its problem; ConfigError if none is usable."""
    problems = []
    for path in config_files(conf_dir):
        try:
            conf = load_file(path)
        except ConfigError as e:
            log.warning("skipped: %s", e.message)
            problems.append(e.message)
            continue
        if name is None or conf.name == name:
            return conf
    what = f"no CNI network configuration named {name!r}" if name else "no valid CNI network configuration"
    if problems:
        raise ConfigError(f"{what} in {conf_dir}: " + "; ".join(problems))
    raise ConfigError(f"{what} in {conf_dir} (files ending {', '.join(EXTENSIONS)})")


# ---- the default network ----------------------------------------------------------------------------------------
def default_text() -> str:
    """The default conflist as shipped (10-hypercontainer.conflist): bridge `hc-cni0` with host-local IPAM on
    10.66.0.0/16 (not podman's 10.88/16, hyperd's 10.77/16, docker's 172.17/16 or Kubernetes' usual ranges),
    masquerade, hairpin; portmap (hostPort), firewall (FORWARD accepts, for hosts whose policy drops), bandwidth
    (pods' ingress/egress limits), loopback."""
    return resources.files(__package__).joinpath(DEFAULT_NAME).read_text()


def default() -> NetworkConfig:
    return parse(default_text(), DEFAULT_NAME)


def has_network(conf_dir: str | Path, name: str) -> bool:
    """Whether `conf_dir` holds a valid configuration of the network `name`."""
    try:
        load(conf_dir, name)
    except ConfigError:
        return False
    return True


def install_default(conf_dir: str | Path = DEFAULT_CONF_DIR, force: bool = False,
                    by_name: bool = False) -> Path | None:
    """Writes the default conflist into `conf_dir` if that holds no configuration (or with `force`, over the file
    of that name only); the path written, or None when the directory already had one (left as it was).
    `by_name`: other networks do not count, only one named as the default (`hypercontainer`): it is written unless
    such a network is there (a runtime that picks its network by name, hyperd's CRI, then finds it beside podman's
    or containerd's); a file of the default's file name that is not that network is an error, never overwritten."""
    d = Path(conf_dir)
    target = d / DEFAULT_NAME
    existing = config_files(d)
    if by_name and not force:
        name = default().name
        if has_network(d, name):
            log.info("CNI network %s already configured in %s: left as it is", name, d)
            return None
        if target.exists():
            raise ConfigError(f"{target} exists but holds no valid {name!r} network: fix or remove it")
    elif existing and not force:
        log.info("CNI configuration already present in %s (%s): left as it is", d, existing[0].name)
        return None
    d.mkdir(parents=True, exist_ok=True, mode=0o755)
    text = default_text()
    parse(text, DEFAULT_NAME)  # never install something load() would skip
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".hc-", suffix=".tmp")  # not a config name: load() never reads it
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
