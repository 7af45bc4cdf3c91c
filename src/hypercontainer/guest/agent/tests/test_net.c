/* net_parse_cidr: accepted and refused addresses (the rest of net.c needs a guest and is tested there). */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "net.h"

static int failures;

static void check(const char *in, int ok, const char *want_addr, const char *want_mask)
{
	struct in_addr a, m;
	struct err e = {0};
	char ga[INET_ADDRSTRLEN] = "", gm[INET_ADDRSTRLEN] = "";
	int rc = net_parse_cidr(in, &a, &m, &e);
	if (rc == 0) {
		inet_ntop(AF_INET, &a, ga, sizeof(ga));
		inet_ntop(AF_INET, &m, gm, sizeof(gm));
	}
	if ((rc == 0) != ok || (ok && (strcmp(ga, want_addr) || strcmp(gm, want_mask)))) {
		printf("FAIL %s: rc=%d %s %s (%s)\n", in, rc, ga, gm, e.msg);
		failures++;
	}
}

int main(void)
{
	check("10.77.0.2/16", 1, "10.77.0.2", "255.255.0.0");
	check("10.0.2.15/24", 1, "10.0.2.15", "255.255.255.0");
	check("192.0.2.1/32", 1, "192.0.2.1", "255.255.255.255");
	check("1.2.3.4/1", 1, "1.2.3.4", "128.0.0.0");
	const char *bad[] = {"", "10.0.0.1", "10.0.0.1/", "10.0.0.1/0", "10.0.0.1/33", "10.0.0.1/2x", "10.0.0/24",
			     "300.0.0.1/8", "10.0.0.1/-1", "abcdefghijklmnopqrstuvwxyz/8", "/24"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		check(bad[i], 0, NULL, NULL);
	printf("net: %s\n", failures ? "FAILED" : "ok");
	return failures != 0;
}
