/*
 * proto.c: frames from a hostile host (or a hostile guest, for the host's agent binary) on either channel, fed in
 * arbitrary chunks through reader_feed/reader_next, each control frame's payload through msg_decode, and whatever
 * decodes encoded again with frame_begin/frame_add_* and decoded to the same fields.
 *
 * Input: a byte (bit 0: control channel; bits 1-3: how many chunk sizes follow, a byte each: 1 + b % 64), then the
 * stream.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

static void check_roundtrip(const struct msg *m)
{
	struct buf b = {0};
	if (frame_begin(&b, m->type, m->seq) < 0)
		abort();
	for (size_t i = 0; i < m->nfields; i++) {
		const struct field *f = &m->fields[i];
		int rc = field_table[f->tag].kind == KIND_U64 ? frame_add_u64(&b, f->tag, f->u64)
							       : frame_add_str(&b, f->tag, f->str);
		if (rc < 0)
			abort();
	}
	frame_end(&b);
	struct msg again;
	const char *why = NULL;
	if (msg_decode(m->type, m->seq, b.data + CTL_HDR, b.len - CTL_HDR, &again, &why) < 0)
		abort(); /* what decoded once must decode again */
	if (again.nfields != m->nfields)
		abort();
	for (size_t i = 0; i < m->nfields; i++) {
		const struct field *x = &m->fields[i], *y = &again.fields[i];
		if (x->tag != y->tag || x->u64 != y->u64 || (!x->str) != (!y->str) || (x->str && strcmp(x->str, y->str)))
			abort();
	}
	/* lookups over every tag, as the request handlers make them */
	for (uint16_t t = 0; t <= F_MAX_TAG + 1; t++) {
		size_t n = msg_count(m, t);
		for (size_t i = 0; i < n; i++)
			if (!msg_nth(m, t, i))
				abort();
		(void)msg_get(m, t);
		(void)msg_u64(m, t, 7);
		(void)msg_str(m, t, "");
	}
	msg_free(&again);
	buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum reader_kind kind = (data[0] & 1) ? READER_CTL : READER_IO;
	size_t nsizes = (data[0] >> 1) & 7;
	if (size < 1 + nsizes)
		return 0;
	const uint8_t *sizes = data + 1, *body = data + 1 + nsizes;
	size_t len = size - 1 - nsizes, off = 0;
	struct reader r = {0};
	for (size_t c = 0; c <= nsizes && off <= len; c++) {
		size_t n = c < nsizes ? 1 + sizes[c] % 64 : len - off;
		if (n > len - off)
			n = len - off;
		/* zero-byte feeds too (tests/vectors/fuzz/agent_proto/zero-length-feed-null-offset: on a fresh reader
		 * they once did arithmetic on its NULL buffer) */
		if (reader_feed(&r, body + off, n) < 0)
			abort();
		off += n;
		for (;;) {
			uint64_t a;
			uint32_t b, flen;
			const uint8_t *fbody;
			const char *why = NULL;
			int rc = reader_next(&r, kind, &a, &b, &fbody, &flen, &why);
			if (rc < 0) {
				if (!why)
					abort();
				goto out;
			}
			if (rc == 0)
				break;
			if (kind == READER_CTL) {
				struct msg m;
				if (msg_decode((uint32_t)a, b, fbody, flen, &m, &why) < 0) {
					if (!why)
						abort();
					continue;
				}
				check_roundtrip(&m);
				msg_free(&m);
			}
		}
	}
out:
	free(r.data);
	return 0;
}
