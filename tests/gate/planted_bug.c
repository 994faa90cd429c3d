#include "pfbuild.h"
/*
 * Deliberate memory bugs for proving the integration suite's sanitizer gate (scripts/test.sh,
 * step "sanitizer gate"). Linked into the pgfunnel executable ONLY when meson is configured with
 * -Dplanted_bug=true, which no product or CI test build sets except that one check.
 *
 * The environment variable PF_PLANTED_BUG picks the bug; unset, nothing happens:
 *   leak       a block allocated at start-up and never freed (only LeakSanitizer at exit sees it);
 *   overflow   a one-byte heap read past a block at exit (AddressSanitizer);
 *   undefined  a signed integer overflow at exit (UndefinedBehaviorSanitizer);
 *   hang       a process that never finishes exiting and blocks the stop signals (the teardown
 *              has to SIGKILL it, so its exit-time checks never run: the gate must call that
 *              a failure too).
 * The bugs fire at start-up and at exit, so the test itself passes and only the gate (the
 * reports read after a graceful stop) can fail it.
 */

#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

volatile uintptr_t pf_planted_hidden;
volatile int pf_planted_int = INT_MAX;

static const char *planted(void)
{
	const char *v = getenv("PF_PLANTED_BUG");

	return v ? v : "";
}

/*
 * Leaks 32 blocks. LeakSanitizer is conservative: a stale copy of a pointer left in a register
 * or an uninitialised stack slot makes its block look reachable, so one block alone is not
 * reliably reported; of 32, only the last few can have such copies. What is kept is the XOR of
 * the addresses, which points nowhere.
 */
__attribute__((noinline)) static void leak_blocks(void)
{
	for (int i = 0; i < 32; i++) {
		void *p = malloc(4242);

		if (p)
			memset(p, 0x5a, 4242);
		pf_planted_hidden ^= (uintptr_t)p;
	}
}

/*
 * Overwrites the stack below the caller, so that no stale copy of the pointer is left where
 * main() keeps uninitialised locals: LeakSanitizer scans the live stack, and a short run
 * (pgfunnel --version) would otherwise still "reach" the block.
 */
__attribute__((noinline)) static void scrub_stack(void)
{
	volatile char junk[32768];

	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = 0;
}

__attribute__((constructor)) static void planted_at_start(void)
{
	if (strcmp(planted(), "leak") == 0) {
		leak_blocks();
		scrub_stack();
	}
}

__attribute__((destructor)) static void planted_at_exit(void)
{
	if (strcmp(planted(), "overflow") == 0) {
		char *p = malloc(16);
		volatile size_t i = 16;

		if (p) {
			memset(p, 1, 16);
			pf_planted_int = p[i];
			free(p);
		}
	} else if (strcmp(planted(), "undefined") == 0) {
		pf_planted_int = pf_planted_int + 1;
	} else if (strcmp(planted(), "hang") == 0) {
		sigset_t set;

		sigemptyset(&set);
		sigaddset(&set, SIGINT);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGQUIT);
		sigprocmask(SIG_BLOCK, &set, NULL);
		for (;;)
			pause();
	}
}
