"""Hypervisor driver: the only place that knows QEMU's command line and QMP."""
