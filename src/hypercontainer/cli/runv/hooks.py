"""OCI hooks, run on the host as runc runs them: the container's state as JSON on stdin, the hook's args and env,
its timeout. prestart and createRuntime run while the container is created (docker's networking is a prestart
hook: it moves the container's interface into the namespace the state's pid is in), poststart after start,
poststop after delete. They run in the host's network and mount namespaces even where the shim has left them
(`netns_fd`; storage.mountns)."""

from __future__ import annotations

import json
import subprocess

from ... import nsenter
from ...errors import HCError
from ...spec import oci
from ...storage import mountns
from .state import OCI_VERSION


def run(cfg: oci.Config, kind: str, state: dict, netns_fd: int | None = None) -> None:
    """Every hook of `kind`, in order; HCError naming the hook at the first that fails or times out."""
    for hook in oci.hooks(cfg, kind):
        path, args = str(hook["path"]), [str(a) for a in hook.get("args") or [hook["path"]]]
        env = [str(e) for e in hook.get("env") or []]
        timeout = hook.get("timeout") if isinstance(hook.get("timeout"), int) and hook["timeout"] > 0 else None

        mnt = mountns.host_namespace()

        def enter(fd: int | None = netns_fd, mnt: int | None = mnt) -> None:
            if fd is not None:
                nsenter.setns(fd)
            if mnt is not None:
                mountns.setns(mnt)

        try:
            r = subprocess.run(args, executable=path, input=json.dumps(state).encode(), capture_output=True,
                               env=dict(e.split("=", 1) for e in env if "=" in e), timeout=timeout,
                               preexec_fn=enter if netns_fd is not None or mnt is not None else None,
                               pass_fds=(), cwd="/")
        except subprocess.TimeoutExpired:
            raise HCError(f"{kind} hook {path}: timed out after {timeout} s") from None
        except OSError as e:
            raise HCError(f"{kind} hook {path}: {e.strerror}") from None
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()
            raise HCError(f"{kind} hook {path} exited with status {r.returncode}"
                          + (f": {msg[-1]}" if msg else ""))


def state(cfg: oci.Config, cid: str, bundle: str, status: str, pid: int) -> dict:
    """The state a hook reads on stdin (the OCI runtime spec's)."""
    return {"ociVersion": OCI_VERSION, "id": cid, "status": status, "pid": pid, "bundle": bundle,
            "annotations": cfg.annotations}
