/*
 * The request decoders of security.c and spawn.c: seccomp_parse (base64 classic BPF, flags), parse_rlimit,
 * container_path_ok, path_is_clean_relative, status_mask (/proc/PID/status text), oom_kill_count.
 *
 * Input: a byte (low 3 bits pick the decoder, the rest the seccomp flags), then the text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "util.h"
#include "security.h"
#include "spawn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	char *s = malloc(size);
	memcpy(s, data + 1, size - 1);
	s[size - 1] = 0;
	struct err e = {0};
	switch (data[0] & 7) {
	case 0:
	case 1: {
		struct seccomp_filter f = {0};
		if (seccomp_parse(s, data[0] >> 3, &f, &e) == 0) {
			if (f.len > SECCOMP_MAX_INSNS || (f.len && !f.insns))
				abort();
			volatile uint8_t sum = 0;
			for (size_t i = 0; i < f.len * 8; i++) /* every instruction byte is there (ASan) */
				sum += f.insns[i];
			(void)sum;
		} else if (!e.code) {
			abort();
		}
		seccomp_free(&f);
		break;
	}
	case 2: {
		struct rlimit_spec r;
		if (parse_rlimit(s, &r, &e) < 0 && !e.code)
			abort();
		break;
	}
	case 3:
		(void)container_path_ok(s);
		(void)path_is_clean_relative(s);
		break;
	case 4:
		(void)status_mask(s, "SigCgt");
		(void)status_mask(s, "CapEff");
		break;
	default:
		(void)oom_kill_count(s);
		break;
	}
	free(s);
	return 0;
}
