"""Guest side: the C agent's sources, the kernel and the initramfs the host builds from them."""
