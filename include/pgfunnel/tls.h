/*
 * tls: TLS on a conn, with OpenSSL over memory BIOs behind the transport interface
 * (transport.h). libuv keeps the socket; this module turns ciphertext read from it into
 * plaintext for the conn's read callback, and the conn's writes into ciphertext for it. The
 * handshake is driven by the loop (socket reads), never blocking.
 *
 * Contexts (pf_tls_ctx_t) are built from a config snapshot — one to accept TLS from clients
 * (client_tls_*), one to start TLS toward servers (server_tls_*) — and shared, reference
 * counted, by every connection that began TLS under them: a RELOAD builds new ones for new
 * connections while existing connections keep theirs.
 *
 * Errors of a TLS connection (a failed handshake, a bad record, a certificate that does not
 * verify) reach the conn as a read error (UV_EPROTO) after the plaintext before them;
 * pf_tls_error() tells why, in words fit for a log line or an ErrorResponse.
 */
#ifndef PGFUNNEL_TLS_H
#define PGFUNNEL_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/config.h"
#include "pgfunnel/conn.h"
#include "pgfunnel/util.h"

typedef struct pf_tls_ctx pf_tls_ctx_t;

/*
 * The context for client connections (client_tls_sslmode and the client_tls_* files and
 * settings). *out is NULL when client_tls_sslmode is disable. Returns 0, or -EINVAL with the
 * reason (naming the parameter or file) in err.
 */
PF_MUSTCHECK int pf_tls_ctx_accept_new(const pf_config_t *cfg, pf_tls_ctx_t **out, char *err,
                                       size_t errlen);

/* The context for server connections (server_tls_*); *out is NULL when server_tls_sslmode is
 * disable (allow asks for TLS as prefer does, as PgBouncer 1.25 does). Same contract. */
PF_MUSTCHECK int pf_tls_ctx_connect_new(const pf_config_t *cfg, pf_tls_ctx_t **out, char *err,
                                        size_t errlen);

/* Reference counting (both accept NULL). */
pf_tls_ctx_t *pf_tls_ctx_ref(pf_tls_ctx_t *ctx);
void pf_tls_ctx_unref(pf_tls_ctx_t *ctx);

/* The sslmode the context was built for (pf_sslmode_t). */
int pf_tls_ctx_sslmode(const pf_tls_ctx_t *ctx);

/*
 * Begins TLS as the server on client connection c (after its SSLRequest was answered 'S', or
 * for a direct TLS connection whose first bytes — the ClientHello — are initial[0, len), which
 * the caller then counts as consumed). A direct connection must negotiate the ALPN protocol
 * "postgresql" (PostgreSQL 17). Returns 0 or -errno (c unchanged then).
 */
PF_MUSTCHECK int pf_tls_accept(pf_conn_t *c, pf_tls_ctx_t *ctx, const uint8_t *initial, size_t len,
                               bool direct);

/*
 * Begins TLS as the client on server connection c (after the server answered SSLRequest with
 * 'S'). host is the name or address connected to: sent as SNI when it is a name, and checked
 * against the certificate in verify-full. Bytes written before the handshake completes are
 * held (bounded) and sent once it does. Returns 0 or -errno.
 */
PF_MUSTCHECK int pf_tls_connect(pf_conn_t *c, pf_tls_ctx_t *ctx, const char *host);

/* True when c's bytes pass through TLS. */
bool pf_tls_is_on(const pf_conn_t *c);

/* Why c's TLS failed (NULL when it did not). */
const char *pf_tls_error(const pf_conn_t *c);

/*
 * SHOW CLIENTS/SERVERS' tls column: "TLSv1.3/TLS_AES_256_GCM_SHA384/ECDH=X25519" once the
 * handshake is done, "" for a plain connection (or one still negotiating).
 */
void pf_tls_describe(const pf_conn_t *c, char *buf, size_t n);

/*
 * The tls-server-end-point channel binding data (RFC 5929) of c, a client connection on which
 * pgfunnel is the TLS server: the hash of its own certificate. Returns the length written to
 * out (at most 64), or -errno.
 */
PF_MUSTCHECK int pf_tls_server_end_point(const pf_conn_t *c, uint8_t *out, size_t cap);

/* The common name of the certificate the peer presented and that verified, in buf (NUL
 * terminated). Returns 0, or -ENOENT when there is none. */
PF_MUSTCHECK int pf_tls_peer_common_name(const pf_conn_t *c, char *buf, size_t n);

/* The same certificate's whole subject in RFC 2253 form ("CN=alice,O=Example"), for HBA's
 * clientname=DN. Returns 0, or -ENOENT when there is none (or it does not fit). */
PF_MUSTCHECK int pf_tls_peer_subject(const pf_conn_t *c, char *buf, size_t n);

#endif
