"""Container root filesystems on the host and how they are shared into the guest."""
