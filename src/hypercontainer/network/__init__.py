"""Pod networking behind one provider interface (provider.py): a host bridge with one tap per pod, NAT and published
ports (bridge_mode.py); QEMU user mode as fallback (user_mode.py); none (none_mode.py); per pod, an existing network
namespace the VM joins through taps tc-redirected to its interfaces (netns_mode.py). manager.Network selects the
provider by mode."""
