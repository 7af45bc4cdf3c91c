/* The agent's host unit tests: a failed CHECK prints where and counts; main() exits 1 if any failed. */
#ifndef HC_TEST_CHECK_H
#define HC_TEST_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
			failures++;                                            \
		}                                                              \
	} while (0)

#endif
