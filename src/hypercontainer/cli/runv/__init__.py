"""runv: an OCI runtime command line (runc's), so that podman, containerd and dockerd run containers in VMs.

    hot.py       the entry point: the engine's hot verbs without click, the rest to main.py
    main.py      the command line (click); verbs.py what the lifecycle verbs do
    shim.py      the per-container shim (boots the VM with the pod core, stands in for the container's process)
    factory.py   `runv factory`: VMs and shims kept ready (Kata's VM cache); factory_client.py asks it for them
    standin.py   runv create with a warm shim: the fork of runv create that stands for the container's process
    execproc.py  the stand-in for an exec'd process
    wire.py      the shim's socket protocol; state.py the per-container state; fdio.py fd relays

Kept empty of imports: the shim and runv start as separate processes and their start-up time counts.
"""
