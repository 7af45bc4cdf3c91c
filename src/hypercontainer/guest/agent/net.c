/* Guest networking with plain ioctls: no netlink library, no DHCP; the host decides every address. */
#define _GNU_SOURCE
#include "net.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int net_parse_cidr(const char *s, struct in_addr *addr, struct in_addr *mask, struct err *e)
{
	const char *slash = strchr(s, '/');
	char ip[INET_ADDRSTRLEN], *end;
	if (!slash || (size_t)(slash - s) >= sizeof(ip))
		return fail(e, EINVAL, "invalid address \"%s\" (want a.b.c.d/len)", s);
	memcpy(ip, s, slash - s);
	ip[slash - s] = 0;
	errno = 0;
	long len = strtol(slash + 1, &end, 10);
	if (inet_pton(AF_INET, ip, addr) != 1 || *end || end == slash + 1 || errno || len < 1 || len > 32)
		return fail(e, EINVAL, "invalid address \"%s\" (want a.b.c.d/len)", s);
	mask->s_addr = htonl(0xffffffffu << (32 - len));
	return 0;
}

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

/* The name of the interface whose MAC is `mac` (case-insensitive). */
static int find_by_mac(const char *mac, char *name, size_t len)
{
	struct iface_query q = {.mac = mac};
	if (!each_iface(has_mac, &q))
		return 0;
	snprintf(name, len, "%s", q.name);
	return 1;
}

/* A VM restored from a template carries the template's MAC: the one ethernet interface gets the pod's. */
static int adopt_single_ether(const char *mac, char *name, size_t len)
{
	struct iface_query q = {.mac = mac};
	unsigned b[6];
	if (sscanf(mac, "%2x:%2x:%2x:%2x:%2x:%2x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return 0;
	each_iface(count_ether, &q);
	if (q.ethers != 1) /* none, or more than one: never guess */
		return 0;
	struct ifreq ifr = {0};
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", q.name);
	ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
	for (int i = 0; i < 6; i++)
		ifr.ifr_hwaddr.sa_data[i] = (char)b[i];
	int ok = ioctl(fd, SIOCSIFHWADDR, &ifr) == 0;
	close(fd);
	if (ok)
		snprintf(name, len, "%s", q.name);
	return ok;
}

static void set_sin(struct sockaddr *sa, struct in_addr a)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)sa;
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr = a;
}

int net_configure(const char *mac, const char *cidr, const char *gw, int timeout_ms, struct err *e)
{
	struct in_addr addr, mask, gateway;
	char name[IFNAMSIZ];
	struct timespec pause = {0, 5 * 1000 * 1000};
	if (net_parse_cidr(cidr, &addr, &mask, e) < 0)
		return -1;
	if (gw && inet_pton(AF_INET, gw, &gateway) != 1)
		return fail(e, EINVAL, "invalid gateway \"%s\"", gw);
	for (int waited = 0; !find_by_mac(mac, name, sizeof(name)) && !adopt_single_ether(mac, name, sizeof(name));
	     waited += 5) {
		if (waited >= timeout_ms)
			return fail(e, ENODEV, "no network interface with MAC %s", mac);
		nanosleep(&pause, NULL);
	}
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail_errno(e, "socket");
	struct ifreq ifr = {0};
	int rc = -1;
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	set_sin(&ifr.ifr_addr, addr);
	if (ioctl(fd, SIOCSIFADDR, &ifr) < 0) {
		fail_errno(e, "set address %s on %s", cidr, name);
		goto out;
	}
	set_sin(&ifr.ifr_netmask, mask);
	if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0) {
		fail_errno(e, "set netmask of %s", name);
		goto out;
	}
	if (set_flags_up(fd, name, e) < 0)
		goto out;
	if (gw) {
		struct rtentry rt;
		memset(&rt, 0, sizeof(rt));
		set_sin(&rt.rt_dst, (struct in_addr){0});
		set_sin(&rt.rt_genmask, (struct in_addr){0});
		set_sin(&rt.rt_gateway, gateway);
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = name;
		if (ioctl(fd, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
			fail_errno(e, "add default route via %s", gw);
			goto out;
		}
	}
	rc = 0;
out:
	close(fd);
	return rc;
}
