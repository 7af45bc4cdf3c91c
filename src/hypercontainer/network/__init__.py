"""Pod networking: a host bridge with one tap per pod, NAT and published ports; QEMU user mode as fallback."""
