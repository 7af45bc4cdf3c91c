/* PID 1 duties: early mounts, kernel modules, finding the virtio-serial ports, power-off. */
#ifndef HC_BOOT_H
#define HC_BOOT_H

#include "util.h"

int boot_mounts(struct err *e);
/* Loads the modules listed in /modules/load.list, in order; a missing list is fine. */
int boot_modules(struct err *e);
/* Opens the port named `name` (see /sys/class/virtio-ports), waiting up to timeout_ms for it to appear. */
int boot_open_port(const char *name, int timeout_ms, struct err *e);
int mount_share(const char *tag, const char *fstype, const char *target, struct err *e);
/* "hc.probe" on the kernel command line: power off as soon as init runs. */
int boot_probe_requested(void);
void power_off(void);
/* A VM restored from a template: set the wall clock from the host, and mix the host's random bytes (hex) into
 * the kernel's pool and reseed its generator, so clones of one snapshot do not share their random state. */
int set_clock_ns(unsigned long long ns, struct err *e);
int reseed_random(const char *hex, struct err *e);

#endif
