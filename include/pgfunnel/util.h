/*
 * Small helpers shared by every module: attributes, array sizes, time units, string copying.
 * Nothing here allocates or does I/O.
 */
#ifndef PGFUNNEL_UTIL_H
#define PGFUNNEL_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define PF_MUSTCHECK                __attribute__((warn_unused_result))
#define PF_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#define PF_NORETURN                 _Noreturn
#define PF_UNUSED                   __attribute__((unused))
#define PF_LIKELY(x)                __builtin_expect(!!(x), 1)
#define PF_UNLIKELY(x)              __builtin_expect(!!(x), 0)
#define PF_ARRAY_SIZE(a)            (sizeof(a) / sizeof((a)[0]))

/* Durations and timestamps are microseconds, as in PgBouncer's usec_t. */
typedef int64_t pf_usec_t;
#define PF_USEC_PER_SEC ((pf_usec_t)1000000)

/*
 * Copies src into dst (size n > 0), always NUL-terminating; returns strlen(src) so that
 * a result >= n means the copy was truncated (like strlcpy).
 */
size_t pf_strlcpy(char *dst, const char *src, size_t n);

/* Case-insensitive ASCII string equality (locale-independent). */
int pf_strcaseeq(const char *a, const char *b);

/*
 * Constant-time comparison of two byte strings of equal length n: returns 1 when equal.
 * Use for every comparison of secrets (passwords, hashes, SCRAM proofs, cancel keys).
 */
int pf_memeq_ct(const void *a, const void *b, size_t n);

/*
 * 32-bit FNV-1a hash of a NUL-terminated string, for small open-addressing tables of names.
 * Not for anything a peer could exploit by choosing colliding keys unless the table is bounded.
 */
uint32_t pf_hash_str(const char *s);

/*
 * SipHash-2-4 of len bytes with the 128-bit key (k0, k1): for tables whose keys a peer chooses
 * (with a random key, colliding keys cannot be made up in advance).
 */
uint64_t pf_siphash24(uint64_t k0, uint64_t k1, const void *data, size_t len);

/* Wall-clock time (CLOCK_REALTIME) in microseconds. */
pf_usec_t pf_now_wall_usec(void);

#endif
