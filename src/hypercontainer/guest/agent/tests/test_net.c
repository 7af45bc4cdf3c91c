/*
 * The parsing of START_POD's network entries: addresses, net_if and net_route entries accepted and refused, then the
 * shared vectors (tests/vectors/frames.txt): every "start-pod-net*" frame decoded and its entries read as the agent
 * does (net_read), accepted unless its name says "-bad-" (the host's tests run the same frames through PodRequest). Configuring
 * interfaces needs a guest: tests/test_guest_nics.py. net_dial_local (OPEN_PORT) against a listener of its own.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net.h"
#include "proto.h"

static int failures;

static void check_cidr(const char *in, int route, int ok, int family, const char *want_addr, int want_len)
{
	struct net_cidr c;
	struct err e = {0};
	char got[INET6_ADDRSTRLEN] = "";
	int rc = net_parse_cidr(in, route, &c, &e);
	if (rc == 0)
		inet_ntop(c.family, c.addr, got, sizeof(got));
	if ((rc == 0) != ok || (ok && (c.family != family || strcmp(got, want_addr) || c.len != want_len))) {
		printf("FAIL cidr %s (route %d): rc=%d %s/%d (%s)\n", in, route, rc, got, rc ? -1 : c.len, e.msg);
		failures++;
	}
}

/* Entries in order (net_if lines start with "if ", net_route ones with "route "); `ok`: all of them accepted.
 * `want`: a text the last error must hold. */
static struct net_config cfg;

static void check_entries(const char *const *entries, int ok, const char *want)
{
	struct err e = {0};
	int rc = 0;
	memset(&cfg, 0, sizeof(cfg));
	for (const char *const *p = entries; *p && rc == 0; p++)
		rc = strncmp(*p, "if ", 3) == 0 ? net_add_if(&cfg, *p + 3, &e) : net_add_route(&cfg, *p + 6, &e);
	if ((rc == 0) != ok || (want && !strstr(e.msg, want))) {
		printf("FAIL entries starting %s: rc=%d (%s)\n", entries[0], rc, e.msg);
		failures++;
	}
}

static void check_parsed(void)
{
	const char *entries[] = {"if 02:AB:63:00:00:02 1400 10.77.0.2/16 2001:db8::2/64 10.78.0.2/24",
				 "if 02:68:63:00:01:02 0", "route 0.0.0.0/0 10.77.0.1 02:ab:63:00:00:02",
				 "route ::/0 - 02:68:63:00:01:02", NULL};
	char a[INET6_ADDRSTRLEN];
	check_entries(entries, 1, NULL);
	const struct net_if *f = &cfg.ifs[0];
	int ok = cfg.nifs == 2 && cfg.nroutes == 2 && strcmp(f->mac_text, "02:ab:63:00:00:02") == 0 &&
		 f->mac[1] == 0xab && f->mtu == 1400 && f->naddrs == 3 && f->addrs[1].family == AF_INET6 &&
		 f->addrs[1].len == 64 && cfg.ifs[1].mtu == 0 && cfg.ifs[1].naddrs == 0 && cfg.routes[0].ifidx == 0 &&
		 cfg.routes[0].has_via && cfg.routes[0].dst.len == 0 && cfg.routes[1].ifidx == 1 &&
		 !cfg.routes[1].has_via && cfg.routes[1].dst.family == AF_INET6;
	ok = ok && inet_ntop(AF_INET, cfg.routes[0].via.addr, a, sizeof(a)) && strcmp(a, "10.77.0.1") == 0;
	if (!ok) {
		printf("FAIL parsed entries\n");
		failures++;
	}
}

static int hexval(int c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The "start-pod-net*" vectors: decoded, their entries read by net_read as handle_start_pod does. */
static int run_vectors(const char *path)
{
	static char line[1 << 16];
	static uint8_t raw[1 << 15];
	int seen = 0;
	FILE *fp = fopen(path, "r");
	if (!fp) {
		perror(path);
		return -1;
	}
	while (fgets(line, sizeof(line), fp)) {
		char name[128], kind[16], hex[sizeof(line)];
		if (line[0] == '#' || sscanf(line, "%127s %15s %s", name, kind, hex) != 3 ||
		    strncmp(name, "start-pod-net", 13) != 0)
			continue;
		size_t n = 0;
		for (const char *h = hex; hexval(h[0]) >= 0 && hexval(h[1]) >= 0 && n < sizeof(raw); h += 2)
			raw[n++] = (uint8_t)(hexval(h[0]) << 4 | hexval(h[1]));
		struct msg m;
		const char *why = "";
		struct err e = {0};
		int rc = n < CTL_HDR ? -1 : msg_decode(get_u32(raw), get_u32(raw + 4), raw + CTL_HDR, n - CTL_HDR, &m, &why);
		if (rc < 0) {
			printf("FAIL vector %s: %s\n", name, why);
			failures++;
			continue;
		}
		rc = net_read(&cfg, &m, &e);
		int bad = strstr(name, "-bad-") != NULL;
		if ((rc < 0) != bad || (!bad && cfg.nifs == 0)) {
			printf("FAIL vector %s: %s\n", name, bad ? "accepted" : e.msg);
			failures++;
		} else {
			printf("ok   vector %s%s%s\n", name, bad ? ": " : "", bad ? e.msg : "");
		}
		seen++;
		msg_free(&m);
	}
	fclose(fp);
	return seen;
}

/* A listener on 127.0.0.1 is reached; once it is closed, its port is refused with ECONNREFUSED, named. */
static void check_dial(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	struct err e = {0};
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &len) < 0) {
		printf("FAIL dial: no listener\n");
		failures++;
		return;
	}
	unsigned port = ntohs(a.sin_port);
	int fd = net_dial_local(port, 1000, &e), peer = accept(l, NULL, NULL);
	if (fd < 0 || peer < 0 || write(fd, "x", 1) != 1) {
		printf("FAIL dial %u: %s\n", port, e.msg);
		failures++;
	}
	close(fd), close(peer), close(l);
	char want[64];
	snprintf(want, sizeof(want), "port %u", port);
	if (net_dial_local(port, 1000, &e) >= 0 || e.code != ECONNREFUSED || !strstr(e.msg, want) ||
	    !strstr(e.msg, "refused")) {
		printf("FAIL dial of a closed port: %d %s\n", e.code, e.msg);
		failures++;
	}
}

int main(int argc, char **argv)
{
	check_dial();
	check_cidr("10.77.0.2/16", 0, 1, AF_INET, "10.77.0.2", 16);
	check_cidr("192.0.2.1/32", 0, 1, AF_INET, "192.0.2.1", 32);
	check_cidr("1.2.3.4/1", 0, 1, AF_INET, "1.2.3.4", 1);
	check_cidr("2001:db8::2/64", 0, 1, AF_INET6, "2001:db8::2", 64);
	check_cidr("fe80::1/128", 0, 1, AF_INET6, "fe80::1", 128);
	check_cidr("0.0.0.0/0", 1, 1, AF_INET, "0.0.0.0", 0);
	check_cidr("::/0", 1, 1, AF_INET6, "::", 0);
	check_cidr("10.0.0.0/8", 1, 1, AF_INET, "10.0.0.0", 8);
	check_cidr("2001:db8:99::/48", 1, 1, AF_INET6, "2001:db8:99::", 48);
	const char *bad[] = {"", "10.0.0.1", "10.0.0.1/", "10.0.0.1/0", "10.0.0.1/33", "10.0.0.1/2x", "10.0.0/24",
			     "300.0.0.1/8", "10.0.0.1/-1", "10.0.0.1/+8", "abcdefghijklmnopqrstuvwxyz/8", "/24",
			     "2001:db8::2/129", "2001:db8::2/0", "fe80::1%eth0/64", "2001:db8::2", "10.0.0.1/ 8",
			     "010.0.0.1/8"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		check_cidr(bad[i], 0, 0, 0, NULL, 0);
	const char *bad_dst[] = {"10.0.0.1/8", "2001:db8::1/64", "0.0.0.1/0", "10.0.0.0/33"};
	for (size_t i = 0; i < sizeof(bad_dst) / sizeof(bad_dst[0]); i++)
		check_cidr(bad_dst[i], 1, 0, 0, NULL, 0);

	check_parsed();
	char e1[128];
	snprintf(e1, sizeof(e1), "if 02:68:63:00:00:02 0 10.0.0.2/24");
	const struct {
		const char *entries[4];
		int ok;
		const char *want;
	} cases[] = {
		{{"if 02:68:63:00:00:02 65535", NULL}, 1, NULL},
		{{"if 02:68:63:00:00:02 68 10.0.0.2/24", NULL}, 1, NULL},
		{{"if 02:68:63:00:00:02 1280 2001:db8::2/64", NULL}, 1, NULL},
		{{"if 02:68:63:00:00:02 1279 2001:db8::2/64", NULL}, 0, "IPv6 needs an MTU"},
		{{"if 02:68:63:00:00:02 65536", NULL}, 0, "MTU 65536"},
		{{"if 02:68:63:00:00:02 67", NULL}, 0, "MTU 67"},
		{{"if 02:68:63:00:00:02 -1", NULL}, 0, "want MAC MTU"},
		{{"if 02:68:63:00:00:02", NULL}, 0, "want MAC MTU"},
		{{"if 02:68:63:00:00:02 0 ", NULL}, 0, "want MAC MTU"},
		{{"if 02:68:63:00:00:02 0 10.0.0.2/24 ", NULL}, 0, "invalid address"},
		{{"if 02:68:63:00:00:02  0", NULL}, 0, "want MAC MTU"},
		{{"if 01:68:63:00:00:02 0", NULL}, 0, "invalid MAC"},
		{{"if 00:00:00:00:00:00 0", NULL}, 0, "invalid MAC"},
		{{"if 02:68:63:00:00:0g 0", NULL}, 0, "invalid MAC"},
		{{"if 02:68:63:00:00 0", NULL}, 0, "invalid MAC"},
		{{"if 02-68-63-00-00-02 0", NULL}, 0, "invalid MAC"},
		{{"if 02:68:63:00:00:02 0 10.0.0.2", NULL}, 0, "want ADDR/LEN"},
		{{"if 02:68:63:00:00:02 0", "if 02:68:63:00:00:02 1500", NULL}, 0, "given twice"},
		{{e1, "route 0.0.0.0/0 10.0.0.1 02:68:63:00:00:02", "route 10.1.0.0/16 - 02:68:63:00:00:02", NULL}, 1,
		 NULL},
		{{e1, "route 0.0.0.0/0 10.0.0.1 02:68:63:00:00:03", NULL}, 0, "no net_if entry has MAC 02:68:63:00:00:03"},
		{{e1, "route ::/0 10.0.0.1 02:68:63:00:00:02", NULL}, 0, "different families"},
		{{e1, "route 10.0.0.0/8 nohost 02:68:63:00:00:02", NULL}, 0, "invalid address"},
		{{e1, "route 10.0.0.0/8 - 02:68:63:00:00:02 x", NULL}, 0, "invalid MAC"},
		{{e1, "route 10.0.0.0/8 -", NULL}, 0, "want DST VIA MAC"},
		{{e1, "route 10.0.0.1/8 - 02:68:63:00:00:02", NULL}, 0, "host bits"},
		{{"route 0.0.0.0/0 - 02:68:63:00:00:02", NULL}, 0, "no net_if entry"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_entries(cases[i].entries, cases[i].ok, cases[i].want);
	memset(&cfg, 0, sizeof(cfg));
	struct err e = {0};
	int rc = 0;
	for (int i = 0; i <= NET_MAX_IFS && rc == 0; i++) {
		snprintf(e1, sizeof(e1), "02:00:00:00:00:%02x 0", i + 1);
		rc = net_add_if(&cfg, e1, &e);
	}
	if (rc == 0 || cfg.nifs != NET_MAX_IFS || !strstr(e.msg, "more than")) {
		printf("FAIL interface limit: %s\n", e.msg);
		failures++;
	}
	int vectors = argc > 1 ? run_vectors(argv[1]) : 0;
	if (argc > 1 && vectors <= 1) {
		printf("FAIL no start-pod-net vectors in %s\n", argv[1]);
		failures++;
	}
	printf("net: %s\n", failures ? "FAILED" : "ok");
	return failures != 0;
}
