/*
 * A hostile agent, for host tests only (docs/protocol.md, "Hostile guest"): built with -DHC_HOSTILE into
 * hc-agent-hostile (make hostile), never into the shipped hc-agent. A NEW_CONTAINER or EXEC whose arg[0] is
 * "hostile:MODE" makes the agent break the protocol in that way instead of starting a process.
 */
#ifndef HC_HOSTILE_H
#define HC_HOSTILE_H

#include "proto.h"

#ifdef HC_HOSTILE
/* Returns 1 if the request was a cue (handled: no reply of the usual kind), 0 to serve it as usual. */
int hostile_cue(const struct msg *m);
#endif

#endif
