"""A pod's start with fake VM parts (QEMU, virtiofsd, agent) that fail one step at a time, for cold, template and
pool starts: the right error surfaces, the pod ends failed, and nothing is left — every fake started is stopped,
every agent closed, no mount under the pod's directories (the share tree and overlays are real), its runtime
directory gone. Real VMs run the same paths in test_pods.py, test_templates.py and test_crash_recovery.py."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hypercontainer.errors import AgentError, HCError, VMError
from hypercontainer.image.store import Image
from hypercontainer.pod.container import Container
from hypercontainer.pod.pod import GuestAssets, Pod
from hypercontainer.pod.slot import Lent, Slot
from hypercontainer.pod.sources import Parts
from hypercontainer.pod.states import PodState
from hypercontainer.pod.templates import Template
from hypercontainer.protocol.agent import ContainerRequest
from hypercontainer.protocol.client import ProcessStreams
from hypercontainer.protocol.codec import Msg
from hypercontainer.spec.pod import PodSpec
from hypercontainer.storage.mount import mounts_under
from hypercontainer.vm.qemu import Share

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the share tree mounts overlays: root only")


@dataclass
class Ledger:
    """What the fakes did, and the step at which they fail."""

    fail_at: str
    live: set[str] = field(default_factory=set)  # what is started and not yet stopped/closed
    seen: list[str] = field(default_factory=list)
    streams: list[ProcessStreams] = field(default_factory=list)  # containers started

    def step(self, name: str, what: str | None = None) -> None:
        self.seen.append(name)
        if name == self.fail_at:
            raise (AgentError if name in ("handshake", "start_pod", "new_container") else VMError)(
                f"injected failure at {name}")
        if what:
            self.live.add(what)


class FakeMachine:
    def __init__(self, ledger: Ledger, name: str = "qemu") -> None:
        self.ledger, self.name = ledger, name
        self.proc = None
        self.on_spawn = None
        self._gone: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        self.ledger.step("spawn", self.name)
        if self.on_spawn:
            self.on_spawn()

    async def restore(self, state: Path) -> None:
        self.ledger.step("restore")

    async def resume(self) -> None:
        self.ledger.step("resume")

    async def qmp(self, command: str, args: dict | None = None) -> None:
        self.ledger.step(f"qmp-{command}")

    async def wait(self) -> int:
        return await self._gone

    async def stop(self, grace: float = 0) -> None:
        self.ledger.live.discard(self.name)

    def qemu_log_tail(self) -> str:
        return ""

    def console_tail(self, lines: int = 20) -> str:
        return ""


class FakeShare:
    def __init__(self, ledger: Ledger, source: Path, rundir: Path, force_9p: bool) -> None:
        self.ledger = ledger
        self.proc = None
        self.on_spawn = None
        self.share = Share("9p", "hcshare", path=source) if force_9p else Share("virtiofs", "hcshare",
                                                                                socket=rundir / "v.sock")

    async def start(self) -> Share:
        self.ledger.step("share", "virtiofsd")
        if self.on_spawn:
            self.on_spawn()
        return self.share

    async def stop(self) -> None:
        self.ledger.live.discard("virtiofsd")


class FakeAgent:
    def __init__(self, ledger: Ledger, name: str = "agent") -> None:
        self.ledger, self.name = ledger, name
        self.max_stream, self.guest_uptime = 0, None
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()  # never: the fake is never lost

    async def connect(self, timeout: float = 10.0) -> None:
        self.ledger.step("connect", self.name)

    async def handshake(self, timeout: float) -> str:
        self.ledger.step("handshake")
        return "fake"

    async def start_pod(self, req: object) -> None:
        self.ledger.step("start_pod")

    async def new_container(self, req: ContainerRequest) -> ProcessStreams:
        self.ledger.step("new_container")
        streams = ProcessStreams(self, req.stream, False)  # type: ignore[arg-type]
        streams.pid = 42
        self.ledger.streams.append(streams)
        return streams

    async def shutdown(self) -> None:
        pass

    def unregister(self, stream: int) -> None:  # a process's streams are done with (ProcessStreams calls it)
        pass

    async def close(self) -> None:
        self.ledger.live.discard(self.name)


class FakeClient:
    """A pool VM's agent connection (the pool keeps the AgentClient; the pod wraps it in an Agent)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.max_stream, self.guest_uptime = 0, None
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()  # never: the fake is never lost

    async def request(self, msg: Msg, fields: dict | None = None) -> dict:
        self.ledger.step(msg.name.lower())
        return {"pid": 42}

    def register(self, stream: int, terminal: bool) -> ProcessStreams:
        streams = ProcessStreams(self, stream, terminal)  # type: ignore[arg-type]
        self.ledger.streams.append(streams)
        return streams

    def unregister(self, stream: int) -> None:
        pass

    async def close(self) -> None:
        self.ledger.live.discard("pool-agent")


class FakeTemplates:
    def __init__(self, home: Path) -> None:
        self.template = Template(home)

    def ready(self, cpus: int, memory: int, nic: bool = True) -> Template:
        return self.template


def make_pod(tmp: Path, kind: str, ledger: Ledger) -> Pod:
    layer = tmp / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    image = Image("sha256:" + "0" * 64, ("fake:latest",), (), {"config": {"Cmd": ["true"]}}, ("d",), ("b",),
                  (layer,), 0, "")
    spec = PodSpec.model_validate({"name": "p", "containers": [{"name": "c", "image": "fake"}]})
    c = Container(spec.containers[0], image, stream=2, log_path=tmp / "state" / "logs" / "c.log")
    (tmp / "state" / "logs").mkdir(parents=True)
    pool = None
    if kind == "pool":
        slot_dir = tmp / "run" / "pool" / "slot"
        (slot_dir / "share").mkdir(parents=True)
        slot = Slot(slot_dir, slot_dir / "share", FakeMachine(ledger, "pool-qemu"),  # type: ignore[arg-type]
                    FakeClient(ledger), "tkey", None)  # type: ignore[arg-type]
        ledger.live |= {"pool-qemu", "pool-agent"}  # running and connected before the pod takes it
        pool = Lent(slot)
    pod = Pod("f" * 64, "p", spec, [c], tmp / "state", tmp / "run" / "pod", GuestAssets(tmp / "k", tmp / "i", "tcg"),
              templates=FakeTemplates(tmp / "template") if kind != "cold" else None,  # type: ignore[arg-type]
              boot=kind, pool=pool)  # type: ignore[arg-type]
    pod.parts = Parts(machine=lambda cfg: FakeMachine(ledger),  # type: ignore[arg-type,return-value]
                      share=lambda src, run, f9p: FakeShare(ledger, src, run, f9p),  # type: ignore[arg-type,return-value]
                      agent=lambda ctl, io: FakeAgent(ledger))  # type: ignore[arg-type,return-value]
    return pod


async def finish(pod: Pod, ledger: Ledger) -> None:
    """The started container exits; the pod (not kept alive) stops."""
    for s in ledger.streams:
        s.stdout.put_nowait(None)
        s.stderr.put_nowait(None)
        s.exit.set_result(0)
    for _ in range(200):
        if pod.state == PodState.EXITED:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the pod did not stop: {pod.state}")


STEPS = {  # the steps each kind of start passes, in order
    "cold": ["share", "spawn", "connect", "handshake", "start_pod", "new_container"],
    "template": ["spawn", "restore", "connect", "resume", "handshake", "start_pod", "new_container"],
    "pool": ["qmp-cont", "start_pod", "new_container"],
}


@pytest.mark.parametrize(("kind", "step"), [(k, s) for k, steps in STEPS.items() for s in steps])
async def test_a_failed_step_leaves_nothing(tmp_path: Path, kind: str, step: str) -> None:
    ledger = Ledger(fail_at=step)
    pod = make_pod(tmp_path, kind, ledger)
    events: list[str] = []
    pod.on_event.append(lambda p, action, attrs: events.append(action))
    cold = STEPS["cold"]
    expected = STEPS[kind][: STEPS[kind].index(step) + 1]
    if kind != "cold":  # the clone failed: the pod falls back to a cold boot
        expected += cold[: cold.index(step) + 1] if step in cold else cold
    if kind == "cold" or step in cold:  # ... which fails the same way
        with pytest.raises(HCError, match=f"injected failure at {step}"):
            await pod.start()
        assert pod.state == PodState.FAILED and pod.error == f"injected failure at {step}"
        assert pod.containers[0].exit_code == 125 and pod.containers[0].error == pod.error
    else:  # ... which works: the pod runs, then its container exits and it stops
        await pod.start()
        assert pod.state == PodState.RUNNING and pod.booted_from == "cold" and pod.containers[0].pid == 42
        await finish(pod, ledger)
    assert ("template-fallback" in events) == (kind != "cold")
    assert ledger.live == set(), ledger.live  # every QEMU stopped, virtiofsd stopped, agent closed
    assert not mounts_under(tmp_path)  # share tree and overlay gone
    assert not pod.rundir.exists()
    assert ledger.seen == expected, ledger.seen


@pytest.mark.parametrize("kind", STEPS)
async def test_a_pod_that_ran_leaves_nothing(tmp_path: Path, kind: str) -> None:
    ledger = Ledger(fail_at="never")
    pod = make_pod(tmp_path, kind, ledger)
    await pod.start()
    assert pod.state == PodState.RUNNING and ledger.seen == STEPS[kind]
    assert isinstance(pod.machine, FakeMachine) and (kind != "cold") == (pod.share is None)  # recorded at spawn
    assert pod.booted_from == {"cold": "cold", "template": "template", "pool": "pool:tkey"}[kind]
    await finish(pod, ledger)
    assert ledger.live == set() and not mounts_under(tmp_path) and not pod.rundir.exists()


async def test_a_failure_before_the_vm_still_returns_the_pool_vm(tmp_path: Path) -> None:
    """The pod took a pool VM, then its root could not be prepared (the image has no command): the pool VM goes
    too, not only what the pod made itself."""
    ledger = Ledger(fail_at="never")
    pod = make_pod(tmp_path, "pool", ledger)
    pod.containers[0].image.config["config"]["Cmd"] = []
    with pytest.raises(HCError, match="no command specified"):
        await pod.start()
    assert ledger.live == set() and not mounts_under(tmp_path) and not pod.rundir.exists()
