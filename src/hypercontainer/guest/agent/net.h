/* Guest networking: loopback, and the pod's interface (found by its MAC) with its address and default route. */
#ifndef HC_NET_H
#define HC_NET_H

#include <netinet/in.h>

#include "util.h"

/* "a.b.c.d/len" (len 1-32) into an address and a netmask. */
int net_parse_cidr(const char *s, struct in_addr *addr, struct in_addr *mask, struct err *e);
/* Brings up the loopback interface (the kernel gives it 127.0.0.1). */
int net_loopback(struct err *e);
/* Gives the interface with this MAC the address `cidr`, brings it up, and routes everything else via `gw` (may be
 * NULL); waits up to timeout_ms for the interface to appear. */
int net_configure(const char *mac, const char *cidr, const char *gw, int timeout_ms, struct err *e);

#endif
