"""hypercontainer: pods in lightweight VMs, with the feel of containers."""

__version__ = "0.1.0"
