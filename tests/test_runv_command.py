"""runv's create-time lookup of the container's command on the host (cli/runv/command.py): a verdict only where
the host sees what the guest will, never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

from hypercontainer.cli.runv.command import not_found
from hypercontainer.spec import oci


def config(args: list[str], env: list[str] | None = None, mounts: list[str] = ()) -> oci.Config:
    return oci.Config.model_validate({
        "ociVersion": "1.0.2", "root": {"path": "rootfs"},
        "process": {"args": args, "env": ["PATH=/usr/bin:/bin"] if env is None else env, "cwd": "/work"},
        "mounts": [{"destination": m, "type": "bind", "source": "/tmp"} for m in mounts]})


def test_a_verdict_only_where_the_host_sees_what_the_guest_will(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_text("")
    (root / "bin" / "sh").symlink_to("/bin/busybox")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "file").write_text("")
    outside = tmp_path / "outside"
    (outside / "bin").mkdir(parents=True)
    (outside / "bin" / "escape").write_text("")
    (root / "opt").symlink_to(outside)  # an image's symlink out of its root: never followed

    assert not_found(config(["sh"]), root) is None  # a symlink is an entry: the guest resolves it
    assert not_found(config(["busybox"]), root) is None
    assert not_found(config(["nothere"]), root) == 'exec: "nothere": executable file not found in $PATH'
    assert not_found(config(["/bin/nothere"]), root) == 'exec: "/bin/nothere": stat /bin/nothere: no such file or ' \
                                                        'directory'
    assert not_found(config(["/etc/file/x"]), root) is not None  # ENOTDIR: not found for the guest's exec either
    assert not_found(config(["../bin/nothere"]), root) is None  # '..': the guest's to resolve
    assert not_found(config(["sub/nothere"]), root) is not None  # relative to cwd /work, which does not exist
    # undecided: a PATH directory reached through a symlink, a relative PATH entry, a mount at or above a candidate
    assert not_found(config(["escape"], ["PATH=/opt/bin:/bin"]), root) is None
    assert not_found(config(["nothere"], ["PATH=/opt/bin:/bin"]), root) is None
    assert not_found(config(["nothere"], ["PATH=bin:/bin"]), root) is None
    assert not_found(config(["nothere"], mounts=["/usr"]), root) is None
    assert not_found(config(["nothere"], mounts=["/usr/bin/nothere"]), root) is None
    assert not_found(config(["nothere"], mounts=["/usr/lib"]), root) is not None  # beside, not over, a candidate
    assert not_found(config(["nothere"], ["PATH=/dev:/bin"]), root) is None  # the guest's own /dev
    assert not_found(config(["nothere"], []), root) is not None  # no PATH: the agent's default, all absent here
    assert os.listdir(outside / "bin") == ["escape"]
