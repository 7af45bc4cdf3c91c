/* Guest networking: loopback, and the pod's interfaces (found by MAC) with their MTU, IPv4 and IPv6 addresses, and
 * routes: START_POD's net_if and net_route entries (docs/protocol.md, "Network entries"). */
#ifndef HC_NET_H
#define HC_NET_H

#include <net/if.h>
#include <stddef.h>

#include "util.h"

#define NET_MAX_IFS 16
#define NET_MAX_ADDRS 16
#define NET_MAX_ROUTES 64
#define NET_MIN_MTU 68
#define NET_MIN_MTU_IPV6 1280
#define NET_MAX_MTU 65535

/* An address with its prefix length (AF_INET or AF_INET6; IPv4 in the first 4 bytes). */
struct net_cidr {
	int family;
	unsigned char addr[16];
	int len;
	char text[64]; /* as given, for messages */
};

struct net_if {
	unsigned char mac[6];
	char mac_text[18]; /* lower case */
	unsigned mtu;	   /* 0: leave the default */
	size_t naddrs;
	struct net_cidr addrs[NET_MAX_ADDRS];
	char name[IFNAMSIZ]; /* found in the guest (net_apply) */
};

struct net_route {
	struct net_cidr dst;
	int has_via;
	struct net_cidr via; /* len unused */
	size_t ifidx;	     /* into net_config.ifs */
};

struct net_config {
	size_t nifs, nroutes;
	struct net_if ifs[NET_MAX_IFS];
	struct net_route routes[NET_MAX_ROUTES];
};

/* "a.b.c.d/len" or "x:x::x/len" (len decimal digits: 1 up to 32 or 128; 0 too with route set, and then no host
 * bits may be set). */
int net_parse_cidr(const char *s, int route, struct net_cidr *out, struct err *e);
/* Adds a net_if entry "MAC MTU [ADDR/LEN ...]" to the config, checked (no MAC twice). */
int net_add_if(struct net_config *c, const char *entry, struct err *e);
/* Adds a net_route entry "DST VIA MAC" (VIA "-": on the link), its MAC one of the interfaces added before. */
int net_add_route(struct net_config *c, const char *entry, struct err *e);
struct msg;
/* START_POD's net_if and net_route entries (a fresh config, every entry checked; changes nothing). */
int net_read(struct net_config *c, const struct msg *m, struct err *e);
/* Brings up the loopback interface (the kernel gives it 127.0.0.1). */
int net_loopback(struct err *e);
/* A TCP connection to the guest's own localhost:port (OPEN_PORT): 127.0.0.1, else ::1 when that refuses. The
 * socket (non-blocking), or -1 with *e: ECONNREFUSED (nothing listens), ETIMEDOUT (no answer within timeout_ms). */
int net_dial_local(unsigned port, int timeout_ms, struct err *e);
/* Configures the interfaces (each found by MAC, waiting up to timeout_ms for it to appear), then adds the routes in
 * order. Any failure is an error naming the interface, address or route. */
int net_apply(struct net_config *c, int timeout_ms, struct err *e);

#endif
