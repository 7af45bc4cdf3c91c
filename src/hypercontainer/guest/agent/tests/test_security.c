/*
 * security.c's parsers and tables: signal default actions, status masks, the OOM-kill counter, the device list,
 * the default masked paths, the host's path lists and seccomp filters as the agent reads them. cgroup.c's
 * counters (CONTAINER_STATS) from a cgroup tree of the test's own.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cgroup.h"
#include "security.h"

/* "AAAA" repeated, then `tail`: base64 of zero bytes. */
static char *zeros_b64(size_t groups, const char *tail)
{
	char *s = malloc(groups * 4 + strlen(tail) + 1), *p = s;
	for (size_t i = 0; i < groups; i++, p += 4)
		memcpy(p, "AAAA", 4);
	strcpy(p, tail);
	return s;
}

static int parses(const char *b64, uint64_t flags, size_t want_len)
{
	struct seccomp_filter f;
	struct err e = {0};
	int rc = seccomp_parse(b64, flags, &f, &e);
	int ok = want_len ? rc == 0 && f.len == want_len && f.flags == flags : rc < 0 && e.code == EINVAL && !f.insns;
	seccomp_free(&f);
	return ok;
}

static void test_seccomp_and_paths(void)
{
	/* One instruction, BPF_RET|BPF_K SECCOMP_RET_ALLOW, as the host's encoder writes it (x86_64 byte order). */
	struct seccomp_filter f;
	struct err e = {0};
	static const unsigned char allow[8] = {0x06, 0, 0, 0, 0, 0, 0xff, 0x7f};
	CHECK(seccomp_parse("BgAAAAAA/38=", 0, &f, &e) == 0 && f.len == 1 && memcmp(f.insns, allow, 8) == 0);
	seccomp_free(&f);
	CHECK(!f.insns && f.len == 0);
	CHECK(parses("BgAAAAAA/38=", SECCOMP_FLAG_LOG | SECCOMP_FLAG_SPEC_ALLOW, 1));
	CHECK(parses("BgAAAAAA/38=BgAAAAAA/38=", 0, 0)); /* padding in the middle */
	CHECK(parses("BgAAAAAA/38=", 1, 0));		  /* TSYNC: not the agent's to pass on */
	CHECK(parses("BgAAAAAA/38=", 8, 0));
	CHECK(parses("", 0, 0));
	CHECK(parses("BgAAAAAA/38", 0, 0));  /* no padding */
	CHECK(parses("BgAAAAAA/3=8", 0, 0)); /* padding before a digit */
	CHECK(parses("BgAA", 0, 0));	      /* 3 bytes: not whole instructions */
	CHECK(parses("BgAAAAAA/38*", 0, 0));
	CHECK(parses("BgAAAAAA/38==", 0, 0));
	char *max = zeros_b64(10922, "AAA="), *over = zeros_b64(10925, "AA==");
	CHECK(parses(max, 0, SECCOMP_MAX_INSNS));
	CHECK(parses(over, 0, 0));
	free(max), free(over);

	CHECK(container_path_ok("/etc/secret") && container_path_ok("/a") && container_path_ok("/proc/sysrq-trigger"));
	CHECK(!container_path_ok("/") && !container_path_ok("") && !container_path_ok("etc"));
	CHECK(!container_path_ok("/a/../b") && !container_path_ok("/a//b") && !container_path_ok("/a/") &&
	      !container_path_ok("/./a"));
	int kcore = 0, sys = 0, n = 0;
	for (const char *const *p = default_masked_paths; *p; p++, n++)
		kcore |= strcmp(*p, "/proc/kcore") == 0;
	for (const char *const *p = default_readonly_paths; *p; p++, n++)
		sys |= strcmp(*p, "/proc/sys") == 0;
	CHECK(kcore && sys && n == 15);
}

static void put(const char *dir, const char *file, const char *text)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	FILE *f = fopen(path, "w");
	if (f)
		fputs(text, f), fclose(f);
}

static void test_cgroup_stats(void)
{
	char root[] = "/tmp/hc-cgroup-XXXXXX", mem[128], cpu[128], procs[64], usage[192];
	struct cg_stats s;
	struct err e = {0};
	CHECK(cg_stat_value("cache 5\ninactive_file 7\ntotal_inactive_file 9\n", "inactive_file") == 7);
	CHECK(cg_stat_value("total_rss 10\n", "rss") == 0 && cg_stat_value("", "rss") == 0);
	if (!mkdtemp(root)) {
		CHECK(!"mkdtemp");
		return;
	}
	cg_root = root;
	CHECK(cg_stats("c1", &s, &e) < 0 && e.code == ENOENT && strstr(e.msg, "no memory cgroup for container c1"));
	snprintf(mem, sizeof(mem), "%s/memory/c1", root);
	snprintf(cpu, sizeof(cpu), "%s/cpuacct/c1", root);
	mkdir_p(mem, 0700), mkdir_p(cpu, 0700);
	put(mem, "memory.usage_in_bytes", "41943040\n");
	put(mem, "memory.stat", "cache 100\nrss 3\ninactive_file 1\ntotal_rss 2097152\ntotal_inactive_file 4194304\n");
	put(mem, "memory.limit_in_bytes", "67108864\n");
	snprintf(procs, sizeof(procs), "%d\n1\n", (int)getpid());
	put(mem, "cgroup.procs", procs);
	put(cpu, "cpuacct.usage", "123456789\n");
	CHECK(cg_stats("c1", &s, &e) == 0 && s.cpu_ns == 123456789 && s.mem_usage == 41943040 &&
	      s.mem_working_set == 41943040 - 4194304 && s.mem_rss == 2097152 && s.mem_limit == 67108864 && s.pids == 2);
	/* No limit of its own, more inactive cache than usage, no cpuacct: CPU time from the processes' stat. */
	put(mem, "memory.limit_in_bytes", "9223372036854771712\n");
	put(mem, "memory.usage_in_bytes", "4096\n");
	snprintf(procs, sizeof(procs), "%d\n", (int)getpid());
	put(mem, "cgroup.procs", procs);
	snprintf(usage, sizeof(usage), "%s/cpuacct.usage", cpu);
	unlink(usage);
	clock_t until = clock() + CLOCKS_PER_SEC / 20; /* 50 ms of CPU: at least a few ticks */
	while (clock() < until)
		;
	CHECK(cg_stats("c1", &s, &e) == 0 && s.mem_limit == 0 && s.mem_working_set == 0 && s.pids == 1);
	CHECK(s.cpu_ns >= 20000000 && s.cpu_ns <= proc_cpu_ns(getpid()));
	CHECK(proc_cpu_ns(-1) == 0);
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	CHECK(system(cmd) == 0);
	cg_root = CGROUP_ROOT;
}

/* Ambient capabilities as runc raises them, in a child (as root): one also inheritable is raised, one that is not
 * is left out without an error (runc spec's config asks for ambient ones with no inheritable set). */
static void test_ambient_caps(void)
{
	if (geteuid() != 0)
		return;
	pid_t pid = fork();
	if (pid == 0) {
		struct cap_spec c = {.bounding = CAPS_ALL, .effective = 1ULL << 5 | 1ULL << 10,
				     .permitted = 1ULL << 5 | 1ULL << 10, .inheritable = 1ULL << 10,
				     .ambient = 1ULL << 5 | 1ULL << 10};
		struct err e = {0};
		if (caps_apply(&c, &e) < 0)
			_exit(2);
		char buf[4096];
		FILE *f = fopen("/proc/self/status", "r");
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
		buf[n] = 0;
		_exit(status_mask(buf, "CapAmb") == 1ULL << 10 ? 0 : 3);
	}
	int st = 0;
	CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

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

	test_seccomp_and_paths();
	test_cgroup_stats();
	test_ambient_caps();

	printf("security: %s\n", failures ? "FAILED" : "ok");
	return failures != 0;
}
