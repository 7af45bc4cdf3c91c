/* Guest networking with plain ioctls: no netlink library, no DHCP, no router advertisements; the host decides every
 * address, MTU and route (START_POD's net_if and net_route entries). */
#define _GNU_SOURCE
#include "net.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"

/* The kernel's struct in6_ifreq (linux/ipv6.h; not in libc headers): SIOCSIFADDR on an AF_INET6 socket. */
struct hc_in6_ifreq {
	struct in6_addr ifr6_addr;
	uint32_t ifr6_prefixlen;
	int ifr6_ifindex;
};

/* ---- parsing ---------------------------------------------------------------------------------------------- */

/* 1-5 decimal digits, the whole of [s, s+n). */
static int parse_digits(const char *s, size_t n, unsigned *out)
{
	unsigned v = 0;
	if (n < 1 || n > 5)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	*out = v;
	return 0;
}

/* An address without prefix ("%" scopes refused: the interface is the entry's). */
static int parse_addr(const char *s, struct net_cidr *out)
{
	memset(out, 0, sizeof(*out));
	if (strlen(s) >= sizeof(out->text) || strchr(s, '%'))
		return -1;
	snprintf(out->text, sizeof(out->text), "%s", s);
	if (inet_pton(AF_INET, s, out->addr) == 1)
		out->family = AF_INET;
	else if (inet_pton(AF_INET6, s, out->addr) == 1)
		out->family = AF_INET6;
	else
		return -1;
	return 0;
}

int net_parse_cidr(const char *s, int route, struct net_cidr *out, struct err *e)
{
	const char *slash = strchr(s, '/');
	char ip[INET6_ADDRSTRLEN];
	unsigned len;
	const char *what = route ? "destination" : "address";
	if (!slash || (size_t)(slash - s) >= sizeof(ip) || parse_digits(slash + 1, strlen(slash + 1), &len) < 0)
		return fail(e, EINVAL, "invalid %s \"%s\" (want ADDR/LEN)", what, s);
	memcpy(ip, s, slash - s);
	ip[slash - s] = 0;
	if (parse_addr(ip, out) < 0)
		return fail(e, EINVAL, "invalid %s \"%s\"", what, s);
	snprintf(out->text, sizeof(out->text), "%s", s);
	unsigned max = out->family == AF_INET ? 32 : 128;
	if (len < (route ? 0u : 1u) || len > max)
		return fail(e, EINVAL, "invalid prefix length in \"%s\"", s);
	out->len = (int)len;
	if (route) /* no host bits */
		for (unsigned bit = len; bit < max; bit++)
			if (out->addr[bit / 8] & (0x80 >> (bit % 8)))
				return fail(e, EINVAL, "destination \"%s\" has host bits set", s);
	return 0;
}

/* xx:xx:xx:xx:xx:xx, unicast and not all zero; `text` gets it in lower case. */
static int parse_mac(const char *s, unsigned char mac[6], char text[18])
{
	static const char hex[] = "0123456789abcdef";
	if (strlen(s) != 17)
		return -1;
	for (int i = 0; i < 6; i++) {
		int v = 0;
		for (int j = 0; j < 2; j++) {
			char c = s[i * 3 + j];
			const char *p = c ? strchr(hex, c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c) : NULL;
			if (!p)
				return -1;
			v = v * 16 + (int)(p - hex);
		}
		if (i < 5 && s[i * 3 + 2] != ':')
			return -1;
		mac[i] = (unsigned char)v;
	}
	if ((mac[0] & 1) || !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]))
		return -1;
	for (int i = 0; i < 17; i++)
		text[i] = s[i] >= 'A' && s[i] <= 'F' ? s[i] - 'A' + 'a' : s[i];
	text[17] = 0;
	return 0;
}

/* The next space-separated token of *s into tok (empty tokens, from doubled or trailing spaces, are refused). */
static int next_token(const char **s, char *tok, size_t size)
{
	const char *end = strchr(*s, ' ');
	size_t n = end ? (size_t)(end - *s) : strlen(*s);
	if (n == 0 || n >= size)
		return -1;
	memcpy(tok, *s, n);
	tok[n] = 0;
	*s = end ? end + 1 : *s + n;
	if (end && !**s) /* a trailing space */
		return -1;
	return 0;
}

int net_add_if(struct net_config *c, const char *entry, struct err *e)
{
	const char *p = entry;
	char tok[80];
	if (c->nifs >= NET_MAX_IFS)
		return fail(e, EINVAL, "more than %d net_if entries", NET_MAX_IFS);
	struct net_if *f = &c->ifs[c->nifs];
	memset(f, 0, sizeof(*f));
	if (next_token(&p, tok, sizeof(tok)) < 0 || parse_mac(tok, f->mac, f->mac_text) < 0)
		return fail(e, EINVAL, "net_if \"%s\": invalid MAC (want a unicast xx:xx:xx:xx:xx:xx)", entry);
	if (!*p || next_token(&p, tok, sizeof(tok)) < 0 || parse_digits(tok, strlen(tok), &f->mtu) < 0)
		return fail(e, EINVAL, "net_if \"%s\": want MAC MTU [ADDR/LEN ...]", entry);
	if (f->mtu && (f->mtu < NET_MIN_MTU || f->mtu > NET_MAX_MTU))
		return fail(e, EINVAL, "net_if \"%s\": MTU %u is not 0 or %d-%d", entry, f->mtu, NET_MIN_MTU,
			    NET_MAX_MTU);
	while (*p) {
		struct err ae = {0};
		if (f->naddrs >= NET_MAX_ADDRS)
			return fail(e, EINVAL, "net_if \"%s\": more than %d addresses", entry, NET_MAX_ADDRS);
		if (next_token(&p, tok, sizeof(tok)) < 0)
			return fail(e, EINVAL, "net_if \"%s\": invalid address", entry);
		if (net_parse_cidr(tok, 0, &f->addrs[f->naddrs], &ae) < 0)
			return fail(e, EINVAL, "net_if \"%s\": %s", entry, ae.msg);
		if (f->addrs[f->naddrs++].family == AF_INET6 && f->mtu && f->mtu < NET_MIN_MTU_IPV6)
			return fail(e, EINVAL, "net_if \"%s\": IPv6 needs an MTU of at least %d", entry, NET_MIN_MTU_IPV6);
	}
	for (size_t i = 0; i < c->nifs; i++)
		if (memcmp(c->ifs[i].mac, f->mac, 6) == 0)
			return fail(e, EINVAL, "net_if \"%s\": MAC %s is given twice", entry, f->mac_text);
	c->nifs++;
	return 0;
}

int net_add_route(struct net_config *c, const char *entry, struct err *e)
{
	const char *p = entry;
	char tok[80], mac_text[18];
	unsigned char mac[6];
	struct err pe = {0};
	if (c->nroutes >= NET_MAX_ROUTES)
		return fail(e, EINVAL, "more than %d net_route entries", NET_MAX_ROUTES);
	struct net_route *r = &c->routes[c->nroutes];
	memset(r, 0, sizeof(*r));
	if (next_token(&p, tok, sizeof(tok)) < 0 || !*p)
		return fail(e, EINVAL, "net_route \"%s\": want DST VIA MAC", entry);
	if (net_parse_cidr(tok, 1, &r->dst, &pe) < 0)
		return fail(e, EINVAL, "net_route \"%s\": %s", entry, pe.msg);
	if (next_token(&p, tok, sizeof(tok)) < 0 || !*p)
		return fail(e, EINVAL, "net_route \"%s\": want DST VIA MAC", entry);
	if (strcmp(tok, "-") != 0) {
		if (parse_addr(tok, &r->via) < 0)
			return fail(e, EINVAL, "net_route \"%s\": invalid address \"%s\"", entry, tok);
		if (r->via.family != r->dst.family)
			return fail(e, EINVAL, "net_route \"%s\": gateway and destination of different families", entry);
		r->has_via = 1;
	}
	if (next_token(&p, tok, sizeof(tok)) < 0 || *p || parse_mac(tok, mac, mac_text) < 0)
		return fail(e, EINVAL, "net_route \"%s\": invalid MAC (want DST VIA MAC)", entry);
	for (r->ifidx = 0; r->ifidx < c->nifs && memcmp(c->ifs[r->ifidx].mac, mac, 6); r->ifidx++)
		;
	if (r->ifidx == c->nifs)
		return fail(e, EINVAL, "net_route \"%s\": no net_if entry has MAC %s", entry, mac_text);
	c->nroutes++;
	return 0;
}

int net_read(struct net_config *c, const struct msg *m, struct err *e)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < msg_count(m, F_NET_IF); i++)
		if (net_add_if(c, msg_nth(m, F_NET_IF, i)->str, e) < 0)
			return -1;
	for (size_t i = 0; i < msg_count(m, F_NET_ROUTE); i++)
		if (net_add_route(c, msg_nth(m, F_NET_ROUTE, i)->str, e) < 0)
			return -1;
	return 0;
}

/* ---- interfaces ------------------------------------------------------------------------------------------- */

static int set_flags_up(int fd, const char *name, struct err *e)
{
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		return fail_errno(e, "get flags of %s", name);
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		return fail_errno(e, "bring up %s", name);
	return 0;
}

int net_loopback(struct err *e)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail_errno(e, "socket");
	int rc = set_flags_up(fd, "lo", e);
	close(fd);
	return rc;
}

/* A non-blocking connect, waited for up to timeout_ms: the socket, or -1 with errno. */
static int dial(const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), soerr = 0;
	socklen_t soerr_len = sizeof(soerr);
	if (fd < 0)
		return -1;
	if (connect(fd, sa, len) == 0)
		return fd;
	if (errno == EINPROGRESS) { /* on loopback, at once: an answer waits only on a full accept queue */
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		int n = poll(&pfd, 1, timeout_ms);
		if (n == 0)
			errno = ETIMEDOUT;
		else if (n > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &soerr_len) == 0 && !soerr)
			return fd;
		else if (n > 0)
			errno = soerr ? soerr : errno;
	}
	int saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

int net_dial_local(unsigned port, int timeout_ms, struct err *e)
{
	struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	int fd = dial((struct sockaddr *)&v4, sizeof(v4), timeout_ms);
	if (fd < 0 && errno == ECONNREFUSED) { /* a server on ::1 only; its failure reports 127.0.0.1's */
		if ((fd = dial((struct sockaddr *)&v6, sizeof(v6), timeout_ms)) < 0)
			errno = ECONNREFUSED;
	}
	if (fd < 0)
		return fail_errno(e, "connect to port %u on the pod's localhost", port);
	return fd;
}

/* Calls fn(name, arg) for each interface in /sys/class/net until it returns non-zero; returns that value. */
static int each_iface(int (*fn)(const char *name, void *arg), void *arg)
{
	DIR *d = opendir("/sys/class/net");
	struct dirent *de;
	int r = 0;
	if (!d)
		return 0;
	while (!r && (de = readdir(d)))
		if (de->d_name[0] != '.' && strlen(de->d_name) < IFNAMSIZ)
			r = fn(de->d_name, arg);
	closedir(d);
	return r;
}

static int sysfs_attr(const char *iface, const char *attr, char *buf, size_t len)
{
	char p[300];
	snprintf(p, sizeof(p), "/sys/class/net/%s/%s", iface, attr);
	return read_line(p, buf, len);
}

struct iface_query {
	const char *mac;
	char name[IFNAMSIZ];
	int ethers;
};

static int has_mac(const char *name, void *arg)
{
	struct iface_query *q = arg;
	char buf[64];
	if (sysfs_attr(name, "address", buf, sizeof(buf)) > 0 && strcasecmp(buf, q->mac) == 0) {
		snprintf(q->name, sizeof(q->name), "%s", name);
		return 1;
	}
	return 0;
}

static int count_ether(const char *name, void *arg)
{
	struct iface_query *q = arg;
	char type[16];
	if (sysfs_attr(name, "type", type, sizeof(type)) > 0 && strcmp(type, "1") == 0) /* ARPHRD_ETHER */
		if (q->ethers++ == 0)
			snprintf(q->name, sizeof(q->name), "%s", name);
	return 0;
}

/* Finds the interface by its MAC, or (a VM restored from a template carries the template's MAC) gives the one
 * ethernet interface this MAC when `adopt` (only ever with one net_if entry: with several, never guess). */
static int find_iface(struct net_if *f, int adopt)
{
	struct iface_query q = {.mac = f->mac_text};
	if (each_iface(has_mac, &q)) {
		snprintf(f->name, sizeof(f->name), "%s", q.name);
		return 1;
	}
	if (!adopt)
		return 0;
	each_iface(count_ether, &q);
	if (q.ethers != 1)
		return 0;
	struct ifreq ifr = {0};
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", q.name);
	ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
	memcpy(ifr.ifr_hwaddr.sa_data, f->mac, 6);
	int ok = ioctl(fd, SIOCSIFHWADDR, &ifr) == 0;
	close(fd);
	if (ok)
		snprintf(f->name, sizeof(f->name), "%s", q.name);
	return ok;
}

/* /proc/sys/net/ipv6/conf/IFACE/KEY = 0; an error only if `needed` (the interface gets IPv6 addresses). */
static int ipv6_off(const struct net_if *f, const char *key, int needed, struct err *e)
{
	char path[128];
	snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/%s", f->name, key);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if ((fd < 0 || write(fd, "0", 1) != 1) && needed) {
		fail_errno(e, "interface %s (%s): set %s to 0", f->mac_text, f->name, key);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (fd >= 0)
		close(fd);
	return 0;
}

static void set_sin(struct sockaddr *sa, const unsigned char *a4)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)sa;
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	memcpy(&sin->sin_addr, a4, 4);
}

static void prefix_mask4(int len, unsigned char out[4])
{
	uint32_t m = len ? htonl(0xffffffffu << (32 - len)) : 0;
	memcpy(out, &m, 4);
}

/* The IPv4 address `a` on the interface: its first under its own name, the others as aliases (NAME:N), which is
 * how the ioctls give an interface more than one. */
static int add_addr4(int fd, const struct net_if *f, const struct net_cidr *a, int nth, struct err *e)
{
	struct ifreq ifr = {0};
	unsigned char mask[4];
	int n = nth ? snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s:%d", f->name, nth)
		    : snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", f->name);
	if (n < 0 || (size_t)n >= sizeof(ifr.ifr_name))
		return fail(e, ENAMETOOLONG, "interface %s (%s): no alias name left for address %s", f->mac_text,
			    f->name, a->text);
	set_sin(&ifr.ifr_addr, a->addr);
	if (ioctl(fd, SIOCSIFADDR, &ifr) < 0)
		return fail_errno(e, "interface %s (%s): add address %s", f->mac_text, f->name, a->text);
	prefix_mask4(a->len, mask);
	set_sin(&ifr.ifr_netmask, mask);
	if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0)
		return fail_errno(e, "interface %s (%s): set prefix of address %s", f->mac_text, f->name, a->text);
	return 0;
}

static int add_addr6(int fd, const struct net_if *f, const struct net_cidr *a, struct err *e)
{
	struct hc_in6_ifreq req = {0};
	memcpy(&req.ifr6_addr, a->addr, 16);
	req.ifr6_prefixlen = (uint32_t)a->len;
	req.ifr6_ifindex = (int)if_nametoindex(f->name);
	if (!req.ifr6_ifindex || (ioctl(fd, SIOCSIFADDR, &req) < 0 && errno != EEXIST))
		return fail_errno(e, "interface %s (%s): add address %s", f->mac_text, f->name, a->text);
	return 0;
}

/* MTU, then (before it is up: its link-local address too) no DAD, which would leave the addresses "tentative" for
 * a second or two, and no router advertisements; up; then the addresses. */
static int configure_if(int fd4, int fd6, const struct net_if *f, struct err *e)
{
	int v6 = 0, n4 = 0;
	for (size_t i = 0; i < f->naddrs; i++)
		v6 |= f->addrs[i].family == AF_INET6;
	if (f->mtu) {
		struct ifreq ifr = {0};
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", f->name);
		ifr.ifr_mtu = (int)f->mtu;
		if (ioctl(fd4, SIOCSIFMTU, &ifr) < 0)
			return fail_errno(e, "interface %s (%s): set MTU %u", f->mac_text, f->name, f->mtu);
	}
	if (ipv6_off(f, "accept_dad", v6, e) < 0 || ipv6_off(f, "accept_ra", v6, e) < 0)
		return -1;
	if (set_flags_up(fd4, f->name, e) < 0)
		return -1;
	for (size_t i = 0; i < f->naddrs; i++) {
		const struct net_cidr *a = &f->addrs[i];
		if (a->family == AF_INET ? add_addr4(fd4, f, a, n4++, e) < 0 : add_addr6(fd6, f, a, e) < 0)
			return -1;
	}
	return 0;
}

static int add_route(int fd4, int fd6, const struct net_config *c, const struct net_route *r, struct err *e)
{
	const struct net_if *f = &c->ifs[r->ifidx];
	int rc;
	if (r->dst.family == AF_INET) {
		struct rtentry rt;
		unsigned char mask[4];
		memset(&rt, 0, sizeof(rt));
		prefix_mask4(r->dst.len, mask);
		set_sin(&rt.rt_dst, r->dst.addr);
		set_sin(&rt.rt_genmask, mask);
		rt.rt_flags = RTF_UP;
		if (r->has_via) {
			set_sin(&rt.rt_gateway, r->via.addr);
			rt.rt_flags |= RTF_GATEWAY;
		}
		rt.rt_dev = (char *)f->name;
		rc = ioctl(fd4, SIOCADDRT, &rt);
	} else {
		struct in6_rtmsg rt;
		memset(&rt, 0, sizeof(rt));
		memcpy(&rt.rtmsg_dst, r->dst.addr, 16);
		rt.rtmsg_dst_len = (unsigned short)r->dst.len;
		rt.rtmsg_flags = RTF_UP;
		if (r->has_via) {
			memcpy(&rt.rtmsg_gateway, r->via.addr, 16);
			rt.rtmsg_flags |= RTF_GATEWAY;
		}
		rt.rtmsg_ifindex = (int)if_nametoindex(f->name);
		rc = ioctl(fd6, SIOCADDRT, &rt);
	}
	if (rc < 0 && errno != EEXIST)
		return fail_errno(e, "route %s via %s dev %s (%s)", r->dst.text, r->has_via ? r->via.text : "-", f->name,
				  f->mac_text);
	return 0;
}

int net_apply(struct net_config *c, int timeout_ms, struct err *e)
{
	struct timespec pause = {0, 5 * 1000 * 1000};
	int v6 = 0, rc = -1;
	for (size_t i = 0; i < c->nifs; i++) {
		c->ifs[i].name[0] = 0;
		for (size_t j = 0; j < c->ifs[i].naddrs; j++)
			v6 |= c->ifs[i].addrs[j].family == AF_INET6;
	}
	for (size_t i = 0; i < c->nroutes; i++)
		v6 |= c->routes[i].dst.family == AF_INET6;
	for (int waited = 0;; waited += 5) {
		size_t missing = c->nifs;
		for (size_t i = 0; i < c->nifs; i++)
			if (!c->ifs[i].name[0] && !find_iface(&c->ifs[i], c->nifs == 1))
				missing = missing == c->nifs ? i : missing;
		if (missing == c->nifs)
			break;
		if (waited >= timeout_ms)
			return fail(e, ENODEV, "no network interface with MAC %s", c->ifs[missing].mac_text);
		nanosleep(&pause, NULL);
	}
	int fd4 = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), fd6 = -1;
	if (fd4 < 0)
		return fail_errno(e, "socket");
	if (v6 && (fd6 = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0) {
		fail_errno(e, "IPv6 socket");
		goto out;
	}
	for (size_t i = 0; i < c->nifs; i++)
		if (configure_if(fd4, fd6, &c->ifs[i], e) < 0)
			goto out;
	for (size_t i = 0; i < c->nroutes; i++)
		if (add_route(fd4, fd6, c, &c->routes[i], e) < 0)
			goto out;
	rc = 0;
out:
	close(fd4);
	if (fd6 >= 0)
		close(fd6);
	return rc;
}
