/* security.c's parsers and tables: signal default actions, status masks, the OOM-kill counter, the device list. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cgroup.h"
#include "security.h"

static int failures;

#define CHECK(cond)                                                    \
	do {                                                           \
		if (!(cond)) {                                         \
			printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
			failures++;                                    \
		}                                                      \
	} while (0)

int main(void)
{
	const char *status = "Name:\tsleep\nSigQ:\t0/3838\nSigPnd:\t0000000000000000\nSigIgn:\t0000000000000004\n"
			     "SigCgt:\t0000000000004002\nCapBnd:\t00000000a80425fb\n";
	CHECK(status_mask(status, "SigIgn") == 0x4);	   /* SIGQUIT ignored */
	CHECK(status_mask(status, "SigCgt") == 0x4002);	   /* SIGINT, SIGTERM caught */
	CHECK(status_mask(status, "CapBnd") == CAPS_DEFAULT);
	CHECK(status_mask(status, "Sig") == 0);		   /* a prefix is not a key */
	CHECK(status_mask(status, "CapAmb") == 0);
	CHECK(status_mask("", "SigCgt") == 0);

	CHECK(sig_default_action(SIGTERM) == 't' && sig_default_action(SIGKILL) == 't');
	CHECK(sig_default_action(SIGQUIT) == 't' && sig_default_action(SIGRTMIN + 1) == 't');
	CHECK(sig_default_action(SIGTSTP) == 's' && sig_default_action(SIGTTIN) == 's');
	CHECK(sig_default_action(SIGCHLD) == 'i' && sig_default_action(SIGWINCH) == 'i');
	CHECK(sig_default_action(SIGCONT) == 'i' && sig_default_action(SIGURG) == 'i');

	CHECK(oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3);
	CHECK(oom_kill_count("oom_kill_disable 1\nunder_oom 0\n") == 0);
	CHECK(oom_kill_count("") == 0);

	/* runc's defaults: mknod of anything, read/write only of the safe nodes; never a serial port or kmsg. */
	int mknod_c = 0, null = 0, ttyS = 0;
	for (const char *const *r = cg_default_devices; *r; r++) {
		mknod_c |= strcmp(*r, "c *:* m") == 0;
		null |= strcmp(*r, "c 1:3 rwm") == 0;
		ttyS |= strncmp(*r, "c 4:", 4) == 0 || strncmp(*r, "c 1:11", 6) == 0 || strcmp(*r, "a") == 0;
	}
	CHECK(mknod_c && null && !ttyS);
	/* CAP_CHOWN..CAP_SETFCAP as docker has them; SYS_ADMIN (21), SYS_PTRACE (19), SYS_MODULE (16) not. */
	CHECK(!(CAPS_DEFAULT >> 21 & 1) && !(CAPS_DEFAULT >> 19 & 1) && !(CAPS_DEFAULT >> 16 & 1));
	CHECK((CAPS_DEFAULT >> 27 & 1) && (CAPS_DEFAULT >> 13 & 1));
	struct cap_spec c;
	caps_default(&c, 0);
	CHECK(c.bounding == CAPS_DEFAULT && c.effective == CAPS_DEFAULT && c.inheritable == 0 && !c.no_new_privs);
	caps_default(&c, 1);
	CHECK(c.bounding == CAPS_ALL && c.permitted == CAPS_ALL && c.ambient == 0);

	printf("security: %s\n", failures ? "FAILED" : "ok");
	return failures != 0;
}
