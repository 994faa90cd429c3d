/*
 * CHECK(cond): a fuzz target's invariant; aborts (libFuzzer records the input) with the failed
 * condition when it does not hold. Shared by every target in tests/fuzz/.
 */
#ifndef PGFUNNEL_FUZZ_CHECK_H
#define PGFUNNEL_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#endif
