/*
 * Password authentication crypto: MD5 secrets and responses, SCRAM-SHA-256 secrets, both sides
 * of a SCRAM-SHA-256 exchange (RFC 5802, RFC 7677, as Postgres speaks it), and a per-worker cache
 * of PBKDF2 results so repeated logins cost no key derivation.
 *
 * Pure code: no I/O, no sockets, no locks, no globals except one relaxed atomic counter of
 * PBKDF2 runs (for tests and stats). Every function returns 0 or a negative errno:
 *   -EPROTO   a peer sent a malformed SCRAM message (SQLSTATE 08P01 toward a client);
 *   -ENOTSUP  the client used a SCRAM feature Postgres does not support: an authorization
 *             identity or a mandatory extension (0A000);
 *   -EACCES   wrong password / failed proof, or the server reported "e=..." (28P01);
 *   -EPERM    (client side) the server's signature is wrong: it does not know the password;
 *   -EINVAL   bad arguments, a malformed stored secret, or a call out of order;
 *   -ENOBUFS  the caller's output buffer is too small;
 *   -ENOMEM   allocation failed; -EIO an OpenSSL primitive failed.
 * After any error a SCRAM state (server or client) is dead: later steps return -EINVAL. On the
 * server side pf_scram_server_error() then says what Postgres would answer the client.
 *
 * Passwords and SASLprep: like Postgres (server and libpq alike), every password goes through
 * SASLprep (RFC 4013, pf_saslprep: map, NFKC, prohibit, bidi) before PBKDF2, and its raw bytes
 * are used when SASLprep fails (invalid UTF-8, prohibited characters, bidi violations). So a
 * plain password in the auth_file, or one pgfunnel logs in to a server with, gives the keys
 * Postgres derives for it, decomposed accents, full-width letters, soft hyphens and non-ASCII
 * spaces included. MD5 hashes the raw bytes, as Postgres does.
 */
#ifndef PGFUNNEL_SCRAM_H
#define PGFUNNEL_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/util.h"

#define PF_SCRAM_MECHANISM          "SCRAM-SHA-256"
#define PF_SCRAM_KEY_LEN            32 /* SHA-256 output */
#define PF_SCRAM_MAX_SALT_LEN       64
#define PF_SCRAM_DEFAULT_SALT_LEN   16 /* what Postgres generates */
#define PF_SCRAM_DEFAULT_ITERATIONS 4096
/*
 * Iteration cap when WE run PBKDF2 for an iteration count a server chose. PBKDF2 runs on the
 * worker's event loop, so its cost stalls every connection of the worker: about 0.4 s per
 * million iterations on a 2020s x86 core (4096, Postgres' default, take ~1.5 ms). The cap,
 * 600000, is the highest count published guidance asks for (OWASP's 2023 figure for
 * PBKDF2-HMAC-SHA256); Postgres ships 4096 and managed services keep that default, so no
 * real server needs more, while a hostile server asking for 1e6 or INT_MAX is refused before
 * any work (-E2BIG). At the cap one login costs ~0.25 s once per (password, salt): the
 * derivation cache answers later logins.
 * Stored secrets (which cost us nothing to use) accept any positive int.
 */
#define PF_SCRAM_MAX_ITERATIONS 600000
/*
 * Longest SCRAM message accepted from a peer. A client's nonce may fill it (Postgres sets no
 * other limit; libpq sends 24 characters).
 */
#define PF_SCRAM_MAX_MSG_LEN    1024
#define PF_SCRAM_RAW_NONCE_LEN  18 /* random bytes behind our nonces: 24 base64 chars */
#define PF_SCRAM_NONCE_B64_LEN  24
#define PF_SCRAM_TEST_NONCE_MAX 32 /* longest nonce the test hooks accept */
/* Room for any server-first-message we send: a client nonce filling a message, ours, salt. */
#define PF_SCRAM_SERVER_FIRST_MAX (PF_SCRAM_MAX_MSG_LEN + 192)
/* Room for any formatted secret: prefix, int, two 44-char keys, an 88-char salt, NUL. */
#define PF_SCRAM_SECRET_MAX_LEN 256
#define PF_MD5_SECRET_LEN       35 /* "md5" + 32 hex digits; buffers are 36 with the NUL */

/* ---- MD5 (AuthenticationMD5Password) ---- */

/*
 * Writes "md5" + hex(md5(password || user)) and a NUL into out: the form Postgres stores and
 * PgBouncer's auth_file accepts. Returns 0, -EINVAL on NULL arguments, -EIO if MD5 is unavailable
 * (FIPS provider).
 */
PF_MUSTCHECK int pf_md5_secret(const char *user, const char *password, char out[36]);

/* True when s is exactly "md5" followed by 32 lowercase hex digits. */
bool pf_md5_is_secret(const char *s);

/*
 * Writes the answer a client sends to AuthenticationMD5Password with this salt:
 * "md5" + hex(md5(hex part of md5_secret || salt)) and a NUL. md5_secret must satisfy
 * pf_md5_is_secret (the caller turns a plain password into one with pf_md5_secret first).
 * Returns 0, -EINVAL for a malformed secret, -EIO on OpenSSL failure.
 */
PF_MUSTCHECK int pf_md5_response(const char *md5_secret, const uint8_t salt[4], char out[36]);

/*
 * True when client_response (a NUL-terminated string, e.g. a PasswordMessage body) is the right
 * answer for md5_secret and salt. Compares in constant time; false for any malformed input.
 */
bool pf_md5_verify(const char *md5_secret, const uint8_t salt[4], const char *client_response);

/* ---- SCRAM secrets ---- */

/* What Postgres stores for a SCRAM user: SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>. */
typedef struct {
	int iterations;
	uint8_t salt[PF_SCRAM_MAX_SALT_LEN];
	size_t salt_len;
	uint8_t stored_key[PF_SCRAM_KEY_LEN];
	uint8_t server_key[PF_SCRAM_KEY_LEN];
} pf_scram_secret_t;

/*
 * HMAC-SHA-256 (RFC 2104) of data (n bytes) under key (keylen bytes; hashed first when longer
 * than a SHA-256 block) into out. Returns 0, -EINVAL (NULL with a non-zero length), -ENOMEM,
 * -EIO.
 */
PF_MUSTCHECK int pf_scram_hmac(const uint8_t *key, size_t keylen, const void *data, size_t n,
                               uint8_t out[PF_SCRAM_KEY_LEN]);

/*
 * Derives the secret for password with the given salt (1..64 bytes) and iterations (>= 1):
 * SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations), ClientKey,
 * StoredKey, ServerKey per RFC 5802 (see above for SASLprep). Writes ClientKey into
 * client_key_out when it is not NULL (needed for passthrough logins). Always runs PBKDF2; see
 * pf_scram_cache_derive for the cached variant. Returns 0, -EINVAL, -ENOMEM, -EIO.
 */
PF_MUSTCHECK int pf_scram_secret_from_password(const char *password, const uint8_t *salt,
                                               size_t salt_len, int iterations,
                                               pf_scram_secret_t *out, uint8_t *client_key_out);

/*
 * Formats secret as "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>" with a NUL
 * into out (n bytes; PF_SCRAM_SECRET_MAX_LEN always suffices). Returns the string length (> 0),
 * -ENOBUFS when n is too small, -EINVAL for an invalid secret.
 */
PF_MUSTCHECK int pf_scram_secret_format(const pf_scram_secret_t *secret, char *out, size_t n);

/*
 * Parses the format above (as found in pg_authid.rolpassword and PgBouncer auth_files).
 * Strict: exact prefix, decimal iterations in [1, INT_MAX] without sign or spaces, canonical
 * padded base64, salt of 1..64 bytes, keys of exactly 32 bytes, nothing trailing.
 * Returns 0 or -EINVAL (out is zeroed on failure).
 */
PF_MUSTCHECK int pf_scram_secret_parse(const char *s, pf_scram_secret_t *out);

/* True when s starts with "SCRAM-SHA-256$" (whether or not the rest parses). */
bool pf_scram_is_secret(const char *s);

/* ---- Derivation cache ---- */

/*
 * A fixed-capacity, set-associative LRU cache of PBKDF2 results, keyed by a SHA-256 over
 * (password, salt, iterations) (or (user, password, iterations) for server-side salts). It never
 * holds the password itself. Not thread-safe: each worker owns one. Evicted and freed entries
 * are wiped with OPENSSL_cleanse.
 */
typedef struct pf_scram_cache pf_scram_cache_t;

/*
 * Allocates a cache holding at least capacity entries (rounded up to a multiple of 8; 0 picks
 * 256). Stores the new cache in *out (caller frees with pf_scram_cache_free).
 * Returns 0, -ENOMEM.
 */
PF_MUSTCHECK int pf_scram_cache_new(size_t capacity, pf_scram_cache_t **out);

/* Wipes and frees the cache; NULL is a no-op. */
void pf_scram_cache_free(pf_scram_cache_t *cache);

/* Counters since creation: lookups answered from the cache, and lookups that ran PBKDF2. */
void pf_scram_cache_stats(const pf_scram_cache_t *cache, uint64_t *hits, uint64_t *misses);

/*
 * pf_scram_secret_from_password through the cache: a hit copies the stored keys and runs no
 * PBKDF2. cache may be NULL (then it is exactly pf_scram_secret_from_password).
 * Returns 0, -EINVAL, -ENOMEM, -EIO.
 */
PF_MUSTCHECK int pf_scram_cache_derive(pf_scram_cache_t *cache, const char *password,
                                       const uint8_t *salt, size_t salt_len, int iterations,
                                       pf_scram_secret_t *out, uint8_t *client_key_out);

/*
 * For a plain-text password in the auth_file, when pgfunnel authenticates a client with SCRAM:
 * returns in *out a secret with a random 16-byte salt drawn the first time this
 * (user, password, iterations) is seen and reused afterwards, so only the first login of a user
 * costs a PBKDF2 (until eviction). A changed password yields a new salt. With cache == NULL a
 * fresh salt is drawn every call. Returns 0, -EINVAL, -ENOMEM, -EIO.
 */
PF_MUSTCHECK int pf_scram_cache_secret_for_password(pf_scram_cache_t *cache, const char *user,
                                                    const char *password, int iterations,
                                                    pf_scram_secret_t *out);

/* Number of PBKDF2 computations run by this process so far (all threads). For tests/stats. */
uint64_t pf_scram_pbkdf2_count(void);

/* ---- Server side: pgfunnel authenticates a client ---- */

/*
 * Why the server side refused a client's message, in the words Postgres uses for the same
 * message (src/backend/libpq/auth-scram.c): SQLSTATE, message and detail ("" when Postgres
 * gives none). sqlstate and message point to static strings.
 */
typedef struct {
	const char *sqlstate;
	const char *message;
	char detail[160];
} pf_scram_error_t;

/*
 * Server exchange state. The body is public only so callers can embed or allocate it; its
 * members are private to scram.c. It is about 4 KB: allocate it for the duration of the
 * authentication, not for the life of a connection. Holds key material: always end with
 * pf_scram_server_clear. Holds no pointers, owns no heap memory.
 */
typedef struct {
	int state;
	bool mock;
	char cbind_flag;     /* 'n', 'y' or 'p' from the gs2 header */
	bool plus_offered;   /* SCRAM-SHA-256-PLUS was offered (TLS): 'y' is refused */
	bool plus;           /* ... and the client chose it: binding data is mandatory */
	uint8_t cb_data[64]; /* tls-server-end-point data */
	size_t cb_len;
	pf_scram_secret_t secret;
	uint8_t client_key[PF_SCRAM_KEY_LEN]; /* recovered from the proof on success */
	char nonce[PF_SCRAM_MAX_MSG_LEN + PF_SCRAM_TEST_NONCE_MAX + 1]; /* client || server */
	size_t client_nonce_len;
	size_t nonce_len;
	char test_nonce[PF_SCRAM_TEST_NONCE_MAX + 1];
	char client_first_bare[PF_SCRAM_MAX_MSG_LEN + 1];
	size_t client_first_bare_len;
	char server_first[PF_SCRAM_SERVER_FIRST_MAX];
	size_t server_first_len;
	pf_scram_error_t err; /* set when a step fails with -EPROTO or -ENOTSUP */
} pf_scram_server_t;

/*
 * Starts an exchange against a stored secret (copied; the caller may drop it afterwards).
 * Returns 0 or -EINVAL (NULL or invalid secret).
 */
PF_MUSTCHECK int pf_scram_server_start(pf_scram_server_t *srv, const pf_scram_secret_t *secret);

/*
 * Starts a doomed exchange for an unknown user, so that probing for user names learns nothing:
 * the salt (16 bytes) and keys are derived from HMAC-SHA-256(mock_key, user), iterations is
 * PF_SCRAM_DEFAULT_ITERATIONS, and pf_scram_server_final always fails with -EACCES after doing
 * the same work as a real check. mock_key is a per-process random key (pf_scram_mock_key_init).
 * Returns 0 or -EINVAL.
 */
PF_MUSTCHECK int pf_scram_server_start_mock(pf_scram_server_t *srv, const char *user,
                                            const uint8_t mock_key[32]);

/* Fills mock_key with 32 random bytes (do it once per process). Returns 0 or -EIO. */
PF_MUSTCHECK int pf_scram_mock_key_init(uint8_t mock_key[32]);

/*
 * TEST ONLY: makes the next pf_scram_server_first use this server nonce (1..32 printable chars
 * except ',') instead of random bytes. Returns 0 or -EINVAL.
 */
PF_MUSTCHECK int pf_scram_server_set_nonce(pf_scram_server_t *srv, const char *nonce);

#define PF_SCRAM_MECHANISM_PLUS "SCRAM-SHA-256-PLUS"

/*
 * After pf_scram_server_start(_mock), on a TLS connection where SCRAM-SHA-256-PLUS was offered:
 * plus says whether the client chose it, cb_data (cb_len <= 64 bytes, copied) is the
 * tls-server-end-point binding data (the hash of pgfunnel's certificate). Then, as Postgres:
 * with PLUS the gs2 header must be "p=tls-server-end-point,," and c= must carry that data;
 * without it, a client saying 'y' (it could bind but thinks we cannot) is refused (28000).
 * Returns 0 or -EINVAL.
 */
PF_MUSTCHECK int pf_scram_server_set_channel_binding(pf_scram_server_t *srv, bool plus,
                                                     const uint8_t *cb_data, size_t cb_len);

/* Whether SCRAM-SHA-256-PLUS was offered (pf_scram_server_set_channel_binding was called). */
bool pf_scram_server_plus_offered(const pf_scram_server_t *srv);

/* The client chose SCRAM-SHA-256-PLUS (offered): binding data becomes mandatory. */
void pf_scram_server_select_plus(pf_scram_server_t *srv);

/*
 * Consumes the client-first-message (the SASLInitialResponse data, len bytes, not
 * NUL-terminated; borrowed) and writes the server-first-message
 * "r=<client nonce><server nonce>,s=<salt>,i=<iterations>" into out (outcap bytes, NUL added;
 * PF_SCRAM_SERVER_FIRST_MAX always suffices), its length without the NUL into *outlen.
 * Parses as Postgres' read_client_first_message does, in the same order, so every refusal
 * is the one Postgres makes: gs2 flags 'n' and 'y' (refused when PLUS was chosen, 'y' also
 * when it was offered); 'p' only with PLUS and the type tls-server-end-point; the user name ignored
 * (Postgres takes it from the startup packet; libpq sends "n="); a nonce of printable characters,
 * possibly empty; optional extensions syntax-checked and ignored; a trailing comma accepted.
 * Returns 0; -EPROTO for a malformed message (08P01) or -ENOTSUP for an authzid ("a=") or a
 * mandatory extension ("m=", 0A000), both with pf_scram_server_error() set; -ENOBUFS; -EINVAL
 * out of order; -EIO.
 */
PF_MUSTCHECK int pf_scram_server_first(pf_scram_server_t *srv, const uint8_t *client_first,
                                       size_t len, char *out, size_t outcap, size_t *outlen);

/*
 * Consumes the client-final-message ("c=<b64 gs2 header>,r=<nonce>[,ext...],p=<proof>"; borrowed,
 * not NUL-terminated) and, when the proof is right, writes the server-final-message
 * "v=<ServerSignature>" into out (NUL added) and its length into *outlen.
 * Checks in Postgres' order (read_client_final_message, then the nonce, then the proof): c=
 * must be the base64 of the gs2 header used in client-first ("biws" for "n,,", "eSws" for
 * "y,,"), then r=, extensions ignored, p= last (its base64 read as Postgres' decoder reads it;
 * one trailing comma allowed), then the combined nonce, then the proof in constant time.
 * Returns 0; -EACCES wrong password (or mock mode; 28P01, nothing set); -EPROTO malformed /
 * wrong c= / wrong nonce, with pf_scram_server_error() set; -ENOBUFS; -EINVAL out of order;
 * -EIO.
 */
PF_MUSTCHECK int pf_scram_server_final(pf_scram_server_t *srv, const uint8_t *client_final,
                                       size_t len, char *out, size_t outcap, size_t *outlen);

/*
 * After pf_scram_server_final succeeded: copies the ClientKey the client proved to know into out,
 * so pgfunnel can log in to Postgres as this user with SCRAM passthrough (pf_scram_client_start
 * with this ClientKey and the secret's ServerKey). Returns 0, or -EINVAL if the exchange did
 * not succeed.
 */
PF_MUSTCHECK int pf_scram_server_client_key(const pf_scram_server_t *srv, uint8_t out[32]);

/*
 * After pf_scram_server_first or pf_scram_server_final failed with -EPROTO or -ENOTSUP: the
 * SQLSTATE, message and detail Postgres sends for that message (borrowed from srv; valid until
 * the next start or clear). Otherwise, an error with a NULL sqlstate.
 */
const pf_scram_error_t *pf_scram_server_error(const pf_scram_server_t *srv);

/* True once pf_scram_server_final has succeeded. */
bool pf_scram_server_is_done(const pf_scram_server_t *srv);

/* Wipes all state and key material (idempotent; srv may be reused with a start call). */
void pf_scram_server_clear(pf_scram_server_t *srv);

/* ---- Client side: pgfunnel authenticates to a Postgres server ---- */

/*
 * Client exchange state; members private to scram.c. Owns a heap copy of the password (if
 * any): always end with pf_scram_client_clear. Borrows the cache given to start.
 */
typedef struct {
	int state;
	bool have_keys; /* passthrough: client_key and server_key given at start */
	char *password;
	pf_scram_cache_t *cache;
	uint8_t client_key[PF_SCRAM_KEY_LEN];
	uint8_t server_key[PF_SCRAM_KEY_LEN];
	uint8_t server_signature[PF_SCRAM_KEY_LEN];
	char nonce[PF_SCRAM_TEST_NONCE_MAX + 1];
	char user[PF_SCRAM_TEST_NONCE_MAX + 1];
	char client_first_bare[8 + 2 * PF_SCRAM_TEST_NONCE_MAX];
	size_t client_first_bare_len;
	int refused_iterations; /* after -E2BIG: the iteration count the server asked for */
} pf_scram_client_t;

/*
 * Starts an exchange either with a plain password (copied; client_key and server_key NULL) or
 * with passthrough keys (password NULL; both 32-byte keys copied), e.g. from
 * pf_scram_server_client_key and the user's stored secret. With passthrough keys the server's
 * salt and iteration count are not used: the keys already embody them. cache (may be NULL) is
 * borrowed until pf_scram_client_clear and saves the PBKDF2 on repeated password logins.
 * Returns 0, -EINVAL (neither or both of password/keys), -ENOMEM.
 */
PF_MUSTCHECK int pf_scram_client_start(pf_scram_client_t *cl, const char *password,
                                       const uint8_t *client_key, const uint8_t *server_key,
                                       pf_scram_cache_t *cache);

/*
 * TEST ONLY: replaces the client nonce (1..32 printable chars except ',') before
 * pf_scram_client_first. Returns 0 or -EINVAL.
 */
PF_MUSTCHECK int pf_scram_client_set_nonce(pf_scram_client_t *cl, const char *nonce);

/*
 * TEST ONLY: sends "n=<user>" instead of "n=" in client-first (to replay the RFC 7677 vector);
 * user is 0..32 printable chars other than ',' and '='. Returns 0 or -EINVAL.
 */
PF_MUSTCHECK int pf_scram_client_set_user(pf_scram_client_t *cl, const char *user);

/*
 * Writes the client-first-message "n,,n=,r=<nonce>" (what libpq sends; the gs2 flag is 'n'
 * since we never do channel binding) into out (NUL added), its length into *outlen.
 * Returns 0, -ENOBUFS, -EINVAL out of order, -EIO.
 */
PF_MUSTCHECK int pf_scram_client_first(pf_scram_client_t *cl, char *out, size_t outcap,
                                       size_t *outlen);

/*
 * Consumes the server-first-message (AuthenticationSASLContinue data; borrowed, not
 * NUL-terminated): r= must extend our nonce with a non-empty printable server part, s= must be
 * base64 of 1..64 bytes, i= a positive int. Writes the client-final-message
 * "c=biws,r=<nonce>,p=<proof>" into out (NUL added), its length into *outlen.
 * Returns 0, -EPROTO, -ENOBUFS, -EINVAL out of order, -EIO, or -E2BIG when we must run PBKDF2
 * ourselves (not passthrough) and i= is above PF_SCRAM_MAX_ITERATIONS: then, the state being
 * dead, cl->refused_iterations holds the count asked for (for the log).
 */
PF_MUSTCHECK int pf_scram_client_final(pf_scram_client_t *cl, const uint8_t *server_first,
                                       size_t len, char *out, size_t outcap, size_t *outlen);

/*
 * Checks the server-final-message (AuthenticationSASLFinal data; borrowed): "v=<signature>"
 * compared in constant time, optional extensions after it ignored.
 * Returns 0 when the server proved it knows the password; -EPERM for a wrong signature;
 * -EACCES when the server sent "e=<error>"; -EPROTO malformed; -EINVAL out of order.
 */
PF_MUSTCHECK int pf_scram_client_verify(pf_scram_client_t *cl, const uint8_t *server_final,
                                        size_t len);

/*
 * Wipes keys, frees the password copy (idempotent; cl may be reused with a start call). cl must
 * have been through pf_scram_client_start (even a failed one) or be zeroed.
 */
void pf_scram_client_clear(pf_scram_client_t *cl);

/*
 * n bytes from OpenSSL's CSPRNG (nonces, salts, cancel keys), served from a small per-thread
 * reserve so that a login does not pay RAND_bytes()'s fork check and lock for every piece.
 * Returns 0 or -EIO.
 */
PF_MUSTCHECK int pf_random_bytes(void *out, size_t n);

#endif
