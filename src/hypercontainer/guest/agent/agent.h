/* State and helpers shared by the agent's files: the process and container tables, the two channels. */
#ifndef HC_AGENT_H
#define HC_AGENT_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto.h"
#include "security.h"
#include "util.h"

#define AGENT_NAME "hc-agent/1"
#define MAX_PROCS 1024
#define MAX_CONTAINERS 256
#define STDIN_HIGH_WATER (1024u * 1024u)
#define SHARE_ROOT "/run/hc/share"
#define VOLS_ROOT "/run/hc/vols"
#define BLK_ROOT "/run/hc/blk"

/*
 * A process slot: a process the agent started, or a port relay (OPEN_PORT): a TCP connection inside the guest
 * relayed on a stream like a process's stdio, with no process (pid 0). A relay's socket is both `in` and `out`
 * until one direction ends; it is closed when both have, and the relay then "exits" (EXITED).
 */
struct proc {
	int used;
	pid_t pid;
	uint64_t stream;
	int in, out, err; /* agent ends, -1 when closed; terminal and relay: in == out */
	int relay;	  /* a port relay: no process; status is 0, or the errno that ended the connection */
	int aborted;	  /* a relay the host ended (SIGNAL): closed by the loop after the reply */
	int terminal;
	struct buf inbuf;
	size_t inoff;
	int in_eof;	   /* host closed stdin: close once inbuf is written */
	int exited, status;
	int oom_killed;	   /* the kernel's OOM killer ended it (or, container_init, a process of its container) */
	int container_init; /* a container's first process */
	int ns_init;	   /* PID 1 of its PID namespace: the kernel drops signals it has no handler for */
	int emulated_sig;  /* a signal the agent delivered as SIGKILL for it (ns_init): reported as 128+N */
	char container[65]; /* the container it runs in; "" if none */
	char cgroup[65];   /* the container whose cgroups it is in; "" if none */
	unsigned long long oom_base; /* the cgroup's OOM kills when it started */
	int held; /* a held container's first process (NEW_CONTAINER hold): its sync channel's fd + 1; 0: none */
};

struct container {
	int used;
	char id[65];
	int mntns;	      /* fd of the container's mount namespace, -1 if unknown */
	int pidns;	      /* fd of its PID namespace (its own or the pod's shared one), -1 if none */
	uint64_t init_stream; /* its first process: when that exits, the container may be started anew */
	struct cap_spec caps; /* what its processes get, EXECs included unless they say otherwise */
	int apply_caps;
	struct seccomp_filter seccomp; /* likewise (insns NULL: none); freed with the slot */
};

extern struct proc procs[MAX_PROCS];
extern struct container containers[MAX_CONTAINERS];
extern int ctl_fd, io_fd, sig_fd;
extern int test_mode, negotiated;
extern const char *share_root;
extern struct buf out;

/* stdio.c: frames to the host, process output and input, exits */
void send_frame(void);
void send_error(uint32_t seq, const struct err *e);
void send_io(uint64_t stream, const void *data, uint32_t len);
struct proc *proc_by_stream(uint64_t stream);
struct container *container_by_id(const char *id);
int pump_output(struct proc *p, int *fdp, uint64_t stream);
void reap(void);
int stdin_backlog(void);
void flush_stdin(struct proc *p);
void on_io(void);
/* A port relay the host ended: both directions closed now, EXITED sent. */
void relay_abort(struct proc *p);

/* agent.c */
extern int io_down;
extern struct reader io_rd;
void channel_down(int *down, struct reader *r, int is_ctl);
void channel_up(int is_ctl);

/* requests.c: the control messages */
void dispatch(const struct msg *m);

#endif
