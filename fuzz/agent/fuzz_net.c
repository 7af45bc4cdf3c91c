/*
 * net.c: START_POD's net_if and net_route entries (and single CIDRs) as the agent reads them, from any payload:
 * msg_decode, then net_read; each parsed entry must hold together (prefix lengths within the family, MTUs within
 * bounds, routes naming an interface that exists).
 *
 * Input: a byte (bit 0: the rest is a START_POD payload, else one "CIDR" string whose route flag is bit 1).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <net/if.h>

#include "proto.h"
#include "util.h"
#include "net.h"

static struct net_config cfg;

static void check_cidr(const struct net_cidr *c, int route)
{
	if (c->family != AF_INET && c->family != AF_INET6)
		abort();
	int max = c->family == AF_INET ? 32 : 128;
	if (c->len < (route ? 0 : 1) || c->len > max)
		abort();
	if (!memchr(c->text, 0, sizeof(c->text)))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	struct err e = {0};
	if (!(data[0] & 1)) {
		char *s = malloc(size);
		memcpy(s, data + 1, size - 1);
		s[size - 1] = 0;
		struct net_cidr c;
		int route = (data[0] >> 1) & 1;
		if (net_parse_cidr(s, route, &c, &e) == 0)
			check_cidr(&c, route);
		else if (!e.code || !memchr(e.msg, 0, sizeof(e.msg)))
			abort();
		free(s);
		return 0;
	}
	struct msg m;
	const char *why;
	if (msg_decode(MSG_START_POD, 1, data + 1, size - 1, &m, &why) < 0)
		return 0;
	if (net_read(&cfg, &m, &e) == 0) {
		if (cfg.nifs > NET_MAX_IFS || cfg.nroutes > NET_MAX_ROUTES)
			abort();
		for (size_t i = 0; i < cfg.nifs; i++) {
			const struct net_if *f = &cfg.ifs[i];
			if (f->naddrs > NET_MAX_ADDRS || (f->mtu && (f->mtu < NET_MIN_MTU || f->mtu > NET_MAX_MTU)))
				abort();
			for (size_t j = 0; j < f->naddrs; j++)
				check_cidr(&f->addrs[j], 0);
		}
		for (size_t i = 0; i < cfg.nroutes; i++) {
			check_cidr(&cfg.routes[i].dst, 1);
			if (cfg.routes[i].ifidx >= cfg.nifs)
				abort();
		}
	} else if (!e.code) {
		abort();
	}
	msg_free(&m);
	return 0;
}
