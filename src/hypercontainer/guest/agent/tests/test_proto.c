/* Runs the shared vectors (tests/vectors/frames.txt) through the agent's codec: decode, re-encode, reject. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

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

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "../../../../tests/vectors/frames.txt";
	FILE *f = fopen(path, "r");
	static char line[1 << 16];
	static uint8_t raw[1 << 15];
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
	return failed ? 1 : 0;
}
