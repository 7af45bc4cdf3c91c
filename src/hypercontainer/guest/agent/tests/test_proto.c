/*
 * Runs the shared vectors (tests/vectors/frames.txt) through the agent's codec: decode, re-encode, reject. Then
 * the agent's ERROR encoder against the "error" and "error-phase" vectors, and in_phase().
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "util.h"

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static size_t unhex(const char *h, uint8_t *out)
{
	size_t n = 0;
	for (; hexval(h[0]) >= 0 && hexval(h[1]) >= 0; h += 2)
		out[n++] = (uint8_t)(hexval(h[0]) << 4 | hexval(h[1]));
	return n;
}

/* 1 if the bytes are accepted as exactly one frame that re-encodes to the same bytes. */
static int roundtrip(const uint8_t *raw, size_t n, enum reader_kind kind, const char **why)
{
	struct reader r = {0};
	uint64_t a;
	uint32_t b, len;
	const uint8_t *body;
	int ok = 0;

	reader_feed(&r, raw, n);
	int got = reader_next(&r, kind, &a, &b, &body, &len, why);
	if (got != 1) {
		if (got == 0)
			*why = "incomplete frame";
		goto out;
	}
	if (r.off != r.len) {
		*why = "trailing bytes";
		goto out;
	}
	if (kind == READER_IO) {
		uint8_t hdr[IO_HDR];
		io_header(hdr, a, len);
		ok = memcmp(hdr, raw, IO_HDR) == 0;
		if (!ok)
			*why = "io header re-encodes differently";
		goto out;
	}
	struct msg m;
	if (msg_decode((uint32_t)a, b, body, len, &m, why) < 0)
		goto out;
	struct buf o = {0};
	frame_begin(&o, m.type, m.seq);
	for (size_t i = 0; i < m.nfields; i++) {
		const struct field *f = &m.fields[i];
		if (field_table[f->tag].kind == KIND_U64)
			frame_add_u64(&o, f->tag, f->u64);
		else
			frame_add_str(&o, f->tag, f->str);
	}
	frame_end(&o);
	ok = o.len == n && memcmp(o.data, raw, n) == 0;
	if (!ok)
		*why = "re-encodes differently";
	buf_free(&o);
	msg_free(&m);
out:
	free(r.data);
	return ok;
}

/* frame_error() must produce the vector `name` byte for byte. */
static int check_error_frame(const char *name, const uint8_t *want, size_t n, int phase)
{
	struct buf b = {0};
	int ok = n && frame_error(&b, 7, 2, "exec nosuch: No such file or directory", phase) == 0 && b.len == n &&
		 memcmp(b.data, want, n) == 0;
	buf_free(&b);
	printf("%s  frame_error -> %s\n", ok ? "ok  " : "FAIL", name);
	return ok;
}

/* The innermost step that names itself wins; a step without a name gets the caller's. */
static int check_in_phase(void)
{
	struct err e = {0};
	fail(&e, 2, "inner"), in_phase(&e, PHASE_NAMESPACE);
	int ok = in_phase(&e, PHASE_MOUNT) == -1 && e.phase == PHASE_NAMESPACE;
	struct err f = {0};
	ok = ok && in_phase(&f, PHASE_MOUNT) == -1 && f.phase == PHASE_MOUNT;
	printf("%s  in_phase\n", ok ? "ok  " : "FAIL");
	return ok;
}

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "../../../../tests/vectors/frames.txt";
	FILE *f = fopen(path, "r");
	static char line[1 << 16];
	static uint8_t raw[1 << 15], error[1 << 12], error_phase[1 << 12];
	size_t nerror = 0, nerror_phase = 0;
	int passed = 0, failed = 0;

	if (!f) {
		perror(path);
		return 2;
	}
	while (fgets(line, sizeof(line), f)) {
		char name[128], kind[16], hex[sizeof(line)];
		if (line[0] == '#' || sscanf(line, "%127s %15s %s", name, kind, hex) != 3)
			continue;
		size_t n = unhex(hex, raw);
		if (strcmp(name, "error") == 0 && n <= sizeof(error))
			memcpy(error, raw, nerror = n);
		if (strcmp(name, "error-phase") == 0 && n <= sizeof(error_phase))
			memcpy(error_phase, raw, nerror_phase = n);
		const char *why = "";
		int bad = strncmp(kind, "bad-", 4) == 0;
		enum reader_kind rk = strstr(kind, "ctl") ? READER_CTL : READER_IO;
		int ok = roundtrip(raw, n, rk, &why);
		if (ok != !bad) {
			printf("FAIL %s (%s): %s\n", name, kind, bad ? "accepted" : why);
			failed++;
		} else {
			printf("ok   %s (%s)%s%s\n", name, kind, bad ? ": " : "", bad ? why : "");
			passed++;
		}
	}
	fclose(f);
	printf("%d passed, %d failed\n", passed, failed);
	int encoders = check_error_frame("error", error, nerror, PHASE_NONE) &
		       check_error_frame("error-phase", error_phase, nerror_phase, PHASE_EXEC) & check_in_phase();
	return failed || !encoders ? 1 : 0;
}
