/*
 * tls: TLS over memory BIOs as a transport (see include/pgfunnel/tls.h).
 *
 * Reading: the socket is read into a per-thread scratch buffer and the ciphertext goes straight
 * into the read BIO; plaintext is decrypted into the buffer the conn's alloc callback gives, one
 * SSL_read per callback, while the conn reads. The socket is read only while the conn wants
 * bytes (or the handshake needs them) and the read BIO holds less than TLS_RBIO_MAX, so a conn
 * that stops reading stops the socket too (backpressure, bounded memory). Plaintext left when
 * the conn stops is delivered from an idle handle once it reads again.
 *
 * Writing: plaintext is encrypted at once into the write BIO and the ciphertext goes to the
 * socket — uv_try_write first when nothing is queued, else a uv_write of a copy. try_write
 * takes bytes only when nothing of ours is queued, and write() completes the conn's request
 * when the ciphertext made of it has left, so the conn's backpressure works as with the plain
 * socket (one batch of overshoot at most). Ciphertext always leaves in the order it was made.
 * Before the handshake completes (a server connection sends its startup packet at once),
 * plaintext is held, up to TLS_EARLY_MAX bytes.
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "pgfunnel/log.h"
#include "pgfunnel/tls.h"

/* Ciphertext held unread in the read BIO before the socket is no longer read. */
#define TLS_RBIO_MAX (64u * 1024u)
/* Our ciphertext waiting for the socket beyond which the socket is no longer read: reading
 * can make output of its own (TLS 1.3 KeyUpdate answers, alerts), so a peer that sends without
 * reading would otherwise grow our queue without bound. Normal traffic stays far below (the
 * conn bounds its forward writes and own output). */
#define TLS_OUT_BACKLOG_MAX (4u * 1024u * 1024u)
/* Plaintext held before the handshake completes. */
#define TLS_EARLY_MAX (1024u * 1024u)
/* How much plaintext one read callback is offered. */
#define TLS_READ_CHUNK 65536u

struct pf_tls_ctx {
	SSL_CTX *ssl_ctx;
	atomic_int refs;
	int sslmode; /* pf_sslmode_t */
	bool accept; /* server role (toward clients) */
};

/* A conn request whose bytes are out (or held): completed from the idle handle. */
typedef struct tls_done {
	struct tls_done *next;
	uv_write_t *req;
	uv_write_cb cb;
	int status;
} tls_done_t;

typedef struct tls tls_t;

/* Ciphertext on its way to the socket. */
typedef struct tls_out {
	uv_write_t req;
	tls_t *st;
	uv_write_t *user; /* the conn's request completed by this write, or NULL */
	uv_write_cb user_cb;
	size_t len;
	uint8_t data[];
} tls_out_t;

struct tls {
	SSL *ssl;
	BIO *rbio, *wbio; /* network side: ciphertext in, ciphertext out */
	pf_tls_ctx_t *ctx;
	pf_conn_t *conn;
	uv_idle_t idle;
	uv_alloc_cb alloc; /* the conn's callbacks */
	uv_read_cb read;
	bool conn_reading; /* the conn wants bytes */
	bool sock_reading; /* the socket is being read */
	bool hs_done;      /* handshake complete */
	bool direct;       /* direct TLS: ALPN "postgresql" required */
	bool starved;      /* the last SSL call wants more ciphertext than the read BIO has */
	bool end_told;     /* the conn was told the end (EOF or error) */
	bool dead;         /* released: only the idle handle's close is left */
	int sock_end;      /* the socket's EOF or error (0: none yet) */
	int failed;        /* a TLS failure (UV_EPROTO) to report, 0 if none */
	unsigned n_out;    /* tls_out_t writes in flight */
	tls_done_t *done_head, *done_tail;
	uint8_t *early; /* plaintext written before the handshake completed */
	size_t early_len;
	char err[256];
};

static _Thread_local char sock_scratch[TLS_READ_CHUNK];

/* ---- contexts ---- */

static void ssl_error_text(char *buf, size_t n, const char *what)
{
	unsigned long e = ERR_peek_last_error();
	const char *reason = e ? ERR_reason_error_string(e) : NULL;

	snprintf(buf, n, "%s%s%s", what, reason ? ": " : "", reason ? reason : "");
	ERR_clear_error();
}

/* client_tls_protocols / server_tls_protocols: a list of tlsv1.0..tlsv1.3, all, secure,
 * legacy, default (PgBouncer's words) → the lowest and highest versions allowed. */
static int parse_protocols(const char *text, int *min_v, int *max_v)
{
	static const struct {
		const char *name;
		unsigned bits;
	} words[] =
	        {
	                {"tlsv1.0", 1u}, {"tlsv1.1", 2u}, {"tlsv1.2", 4u}, {"tlsv1.3", 8u},
	                {"all", 15u},    {"legacy", 15u}, {"secure", 12u}, {"default", 12u},
	                {"tlsv1", 7u}, /* PgBouncer: 1.0, 1.1 and 1.2 */
	        };
	static const int versions[] = {TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION,
	                               TLS1_3_VERSION};
	unsigned bits = 0;
	const char *p = text ? text : "secure";

	while (*p) {
		size_t len;
		bool neg = false, found = false;

		while (*p == ' ' || *p == '\t' || *p == ',' || *p == ':')
			p++;
		if (!*p)
			break;
		if (*p == '!') {
			neg = true;
			p++;
			if (bits == 0)
				bits = 15u;
		}
		len = strcspn(p, " \t,:");
		for (size_t i = 0; i < PF_ARRAY_SIZE(words); i++) {
			if (strlen(words[i].name) == len &&
			    strncasecmp(p, words[i].name, len) == 0) {
				bits = neg ? bits & ~words[i].bits : bits | words[i].bits;
				found = true;
				break;
			}
		}
		if (!found)
			return -EINVAL;
		p += len;
	}
	if (bits == 0)
		return -EINVAL;
	*min_v = *max_v = 0;
	for (int i = 0; i < 4; i++) {
		if (!(bits & (1u << i)))
			continue;
		if (!*min_v)
			*min_v = versions[i];
		*max_v = versions[i];
	}
	return 0;
}

/* A cipher list in OpenSSL syntax, or PgBouncer's shortcuts. NULL: OpenSSL's defaults. */
static const char *cipher_list(const char *v)
{
	if (!v || !*v || strcasecmp(v, "default") == 0 || strcasecmp(v, "secure") == 0 ||
	    strcasecmp(v, "fast") == 0 || strcasecmp(v, "normal") == 0)
		return NULL;
	if (strcasecmp(v, "all") == 0 || strcasecmp(v, "insecure") == 0 ||
	    strcasecmp(v, "compat") == 0 || strcasecmp(v, "legacy") == 0)
		return "ALL:!aNULL:!eNULL";
	return v;
}

/* ALPN (accepting): "postgresql" if the client offers it; a client that offers ALPN without it
 * is refused with no_application_protocol, as PostgreSQL 17 does. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
	static const unsigned char want[] = "postgresql";
	unsigned int i = 0;

	(void)ssl;
	(void)arg;
	while (i < inlen) {
		unsigned int len = in[i];

		if (len > inlen - i - 1)
			break;
		if (len == sizeof(want) - 1 && memcmp(in + i + 1, want, len) == 0) {
			*out = in + i + 1;
			*outlen = (unsigned char)len;
			return SSL_TLSEXT_ERR_OK;
		}
		i += 1 + len;
	}
	return SSL_TLSEXT_ERR_ALERT_FATAL;
}

typedef struct tls_settings {
	int sslmode;
	const char *key_file, *cert_file, *ca_file, *protocols, *ciphers, *ciphers13;
	const char *ecdhcurve, *dheparams; /* accepting only */
	const char *prefix;                /* "client_tls" or "server_tls" */
} tls_settings_t;

static int ctx_new(const tls_settings_t *t, bool accept, pf_tls_ctx_t **out, char *err,
                   size_t errlen)
{
	pf_tls_ctx_t *ctx;
	SSL_CTX *sc;
	int min_v, max_v;
	const char *list;
	bool has_key = t->key_file && *t->key_file, has_cert = t->cert_file && *t->cert_file;

	*out = NULL;
	if (parse_protocols(t->protocols, &min_v, &max_v) < 0) {
		snprintf(err, errlen, "%s_protocols: invalid value \"%s\"", t->prefix,
		         t->protocols ? t->protocols : "");
		return -EINVAL;
	}
	if (accept && (!has_key || !has_cert)) {
		snprintf(err, errlen,
		         "To allow TLS connections from clients, client_tls_key_file "
		         "and client_tls_cert_file must be set.");
		return -EINVAL;
	}
	if (has_key != has_cert) {
		snprintf(err, errlen, "%s_key_file and %s_cert_file must be set together",
		         t->prefix, t->prefix);
		return -EINVAL;
	}
	ctx = calloc(1, sizeof(*ctx));
	sc = SSL_CTX_new(accept ? TLS_server_method() : TLS_client_method());
	if (!ctx || !sc) {
		free(ctx);
		SSL_CTX_free(sc);
		snprintf(err, errlen, "%s: out of memory", t->prefix);
		return -ENOMEM;
	}
	ctx->ssl_ctx = sc;
	atomic_init(&ctx->refs, 1);
	ctx->sslmode = t->sslmode;
	ctx->accept = accept;
	SSL_CTX_set_options(sc, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET |
	                                SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_OFF);
	if (accept)
		SSL_CTX_set_num_tickets(sc, 0);
	if (!SSL_CTX_set_min_proto_version(sc, min_v) ||
	    !SSL_CTX_set_max_proto_version(sc, max_v)) {
		ssl_error_text(err, errlen, "TLS protocol versions");
		goto fail;
	}
	list = cipher_list(t->ciphers);
	if (list && !SSL_CTX_set_cipher_list(sc, list)) {
		snprintf(err, errlen, "%s_ciphers: no usable cipher in \"%s\"", t->prefix, list);
		goto fail;
	}
	if (t->ciphers13 && *t->ciphers13 && !SSL_CTX_set_ciphersuites(sc, t->ciphers13)) {
		snprintf(err, errlen, "%s13_ciphers: no usable cipher suite in \"%s\"", t->prefix,
		         t->ciphers13);
		goto fail;
	}
	if (has_cert) {
		if (SSL_CTX_use_certificate_chain_file(sc, t->cert_file) != 1) {
			char why[200];

			ssl_error_text(why, sizeof(why), "cannot load");
			snprintf(err, errlen, "%s_cert_file \"%s\": %s", t->prefix, t->cert_file,
			         why);
			goto fail;
		}
		if (SSL_CTX_use_PrivateKey_file(sc, t->key_file, SSL_FILETYPE_PEM) != 1) {
			char why[200];

			ssl_error_text(why, sizeof(why), "cannot load");
			snprintf(err, errlen, "%s_key_file \"%s\": %s", t->prefix, t->key_file,
			         why);
			goto fail;
		}
		if (SSL_CTX_check_private_key(sc) != 1) {
			snprintf(err, errlen,
			         "%s_key_file \"%s\" does not match %s_cert_file \"%s\"", t->prefix,
			         t->key_file, t->prefix, t->cert_file);
			goto fail;
		}
	}
	if (t->ca_file && *t->ca_file) {
		if (SSL_CTX_load_verify_locations(sc, t->ca_file, NULL) != 1) {
			char why[200];

			ssl_error_text(why, sizeof(why), "cannot load");
			snprintf(err, errlen, "%s_ca_file \"%s\": %s", t->prefix, t->ca_file, why);
			goto fail;
		}
		if (accept) {
			STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->ca_file);

			if (names)
				SSL_CTX_set_client_CA_list(sc, names);
		}
	} else if (!accept && t->sslmode >= PF_SSLMODE_VERIFY_CA) {
		/* No CA file: the system's trusted certificates. */
		SSL_CTX_set_default_verify_paths(sc);
	} else if (accept && t->sslmode >= PF_SSLMODE_VERIFY_CA) {
		snprintf(err, errlen, "client_tls_sslmode requires client_tls_ca_file");
		goto fail;
	}
	if (accept) {
		if (t->sslmode >= PF_SSLMODE_VERIFY_CA)
			SSL_CTX_set_verify(sc, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
			                   NULL);
		SSL_CTX_set_alpn_select_cb(sc, alpn_select, NULL);
		/* client_tls_ecdhcurve: auto, a curve name, or none (finite-field groups only). */
		if (t->ecdhcurve && *t->ecdhcurve && strcasecmp(t->ecdhcurve, "auto") != 0) {
			const char *groups = strcasecmp(t->ecdhcurve, "none") == 0
			                             ? "ffdhe2048:ffdhe3072:ffdhe4096"
			                             : t->ecdhcurve;

			if (!SSL_CTX_set1_groups_list(sc, groups)) {
				snprintf(err, errlen, "client_tls_ecdhcurve: unknown curve \"%s\"",
				         t->ecdhcurve);
				goto fail;
			}
		}
		/* client_tls_dheparams: none, or auto/legacy (OpenSSL 3 picks the group; it has no
		 * 1024-bit one). */
		if (t->dheparams && strcasecmp(t->dheparams, "none") != 0 &&
		    strcasecmp(t->dheparams, "auto") != 0 &&
		    strcasecmp(t->dheparams, "legacy") != 0) {
			snprintf(err, errlen, "client_tls_dheparams: invalid value \"%s\"",
			         t->dheparams);
			goto fail;
		}
		SSL_CTX_set_dh_auto(sc, !(t->dheparams && strcasecmp(t->dheparams, "none") == 0));
	} else {
		static const unsigned char alpn[] = "\x0apostgresql";

		/* As libpq 17 does; a server that does not know ALPN ignores it. */
		SSL_CTX_set_alpn_protos(sc, alpn, sizeof(alpn) - 1);
	}
	*out = ctx;
	return 0;
fail:
	pf_tls_ctx_unref(ctx);
	return -EINVAL;
}

int pf_tls_ctx_accept_new(const pf_config_t *cfg, pf_tls_ctx_t **out, char *err, size_t errlen)
{
	tls_settings_t t = {
	        .sslmode = cfg->client_tls_sslmode,
	        .key_file = cfg->client_tls_key_file,
	        .cert_file = cfg->client_tls_cert_file,
	        .ca_file = cfg->client_tls_ca_file,
	        .protocols = cfg->client_tls_protocols,
	        .ciphers = cfg->client_tls_ciphers,
	        .ciphers13 = cfg->client_tls13_ciphers,
	        .ecdhcurve = cfg->client_tls_ecdhcurve,
	        .dheparams = cfg->client_tls_dheparams,
	        .prefix = "client_tls",
	};

	*out = NULL;
	if (cfg->client_tls_sslmode == PF_SSLMODE_DISABLE)
		return 0;
	return ctx_new(&t, true, out, err, errlen);
}

int pf_tls_ctx_connect_new(const pf_config_t *cfg, pf_tls_ctx_t **out, char *err, size_t errlen)
{
	tls_settings_t t = {
	        .sslmode = cfg->server_tls_sslmode,
	        .key_file = cfg->server_tls_key_file,
	        .cert_file = cfg->server_tls_cert_file,
	        .ca_file = cfg->server_tls_ca_file,
	        .protocols = cfg->server_tls_protocols,
	        .ciphers = cfg->server_tls_ciphers,
	        .ciphers13 = cfg->server_tls13_ciphers,
	        .prefix = "server_tls",
	};

	*out = NULL;
	if (cfg->server_tls_sslmode == PF_SSLMODE_DISABLE)
		return 0;
	return ctx_new(&t, false, out, err, errlen);
}

pf_tls_ctx_t *pf_tls_ctx_ref(pf_tls_ctx_t *ctx)
{
	if (ctx)
		atomic_fetch_add(&ctx->refs, 1);
	return ctx;
}

void pf_tls_ctx_unref(pf_tls_ctx_t *ctx)
{
	if (!ctx || atomic_fetch_sub(&ctx->refs, 1) != 1)
		return;
	SSL_CTX_free(ctx->ssl_ctx);
	free(ctx);
}

int pf_tls_ctx_sslmode(const pf_tls_ctx_t *ctx)
{
	return ctx ? ctx->sslmode : PF_SSLMODE_DISABLE;
}

/* ---- the transport ---- */

static const pf_transport_ops_t tls_ops;

static tls_t *state_of(uv_stream_t *s)
{
	pf_conn_t *c = s->data;

	assert(c->tp.ops == &tls_ops);
	return c->tp.state;
}

static bool conn_closing(const tls_t *st)
{
	return st->conn->closing || !st->conn->h || uv_is_closing(&st->conn->h->handle);
}

static void fail(tls_t *st, const char *what)
{
	if (st->failed)
		return;
	st->failed = UV_EPROTO;
	if (!st->err[0])
		ssl_error_text(st->err, sizeof(st->err), what);
	ERR_clear_error();
}

/* True while the idle handle has something to do. */
static bool has_work(const tls_t *st)
{
	if (st->done_head)
		return true;
	if (st->end_told || !st->hs_done)
		return false;
	/* Throttled (sbuf_loopcnt) or deferred from here, the conn reads again in the loop's
	 * check phase, after the poll: keep the poll from sleeping meanwhile. */
	if (!st->conn_reading && !st->conn->throttled && !st->conn->resume_pending)
		return false;
	return !st->starved || st->sock_end || st->failed;
}

static void on_idle(uv_idle_t *h);

static void want_idle(tls_t *st)
{
	if (!st->dead && has_work(st) && !uv_is_active((uv_handle_t *)&st->idle))
		uv_idle_start(&st->idle, on_idle);
}

static void complete_later(tls_t *st, uv_write_t *req, uv_write_cb cb, int status)
{
	tls_done_t *d = malloc(sizeof(*d));

	if (!d) {
		/* Cannot queue the completion: call it now rather than never (libuv's
		 * "never synchronously" is kept by every caller of this in practice). */
		cb(req, UV_ENOMEM);
		return;
	}
	d->next = NULL;
	d->req = req;
	d->cb = cb;
	d->status = status;
	if (st->done_tail)
		st->done_tail->next = d;
	else
		st->done_head = d;
	st->done_tail = d;
	want_idle(st);
}

static void sock_update(tls_t *st);

static void on_out_written(uv_write_t *req, int status)
{
	tls_out_t *o = (tls_out_t *)req;
	tls_t *st = o->st;
	uv_write_t *user = o->user;
	uv_write_cb cb = o->user_cb;

	st->n_out--;
	OPENSSL_cleanse(o->data, o->len);
	free(o);
	if (!st->dead && status == 0)
		sock_update(st); /* reading may go on now that our output has left */
	/* The conn may free itself (and release st) from here. */
	if (user)
		cb(user, status);
}

/* Sends what the write BIO holds, after everything sent before. user (with cb) completes when
 * the bytes are out. Returns 0 or a libuv error. */
static int flush_out(tls_t *st, uv_write_t *user, uv_write_cb cb)
{
	uv_stream_t *s = &st->conn->h->stream;
	char *data = NULL;
	long len = BIO_get_mem_data(st->wbio, &data);
	size_t off = 0;
	tls_out_t *o;
	uv_buf_t b;
	int rc;

	if (len <= 0) {
		if (user)
			complete_later(st, user, cb, 0);
		return 0;
	}
	if (!user && st->n_out == 0 && s->write_queue_size == 0) {
		b = uv_buf_init(data, (unsigned)len);
		rc = uv_try_write(s, &b, 1);
		if (rc > 0)
			off = (size_t)rc;
		else if (rc != UV_EAGAIN) {
			(void)BIO_reset(st->wbio);
			return rc;
		}
	}
	if (off == (size_t)len) {
		(void)BIO_reset(st->wbio);
		return 0;
	}
	o = malloc(sizeof(*o) + (size_t)len - off);
	if (!o) {
		(void)BIO_reset(st->wbio);
		return UV_ENOMEM;
	}
	o->st = st;
	o->user = user;
	o->user_cb = cb;
	o->len = (size_t)len - off;
	memcpy(o->data, data + off, o->len);
	(void)BIO_reset(st->wbio);
	b = uv_buf_init((char *)o->data, (unsigned)o->len);
	rc = uv_write(&o->req, s, &b, 1, on_out_written);
	if (rc < 0) {
		free(o);
		return rc;
	}
	st->n_out++;
	return 0;
}

/* Encrypts bufs into the write BIO. Returns 0 or UV_EPROTO. */
static int encrypt(tls_t *st, const uv_buf_t *bufs, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		if (bufs[i].len == 0)
			continue;
		ERR_clear_error();
		if (SSL_write(st->ssl, bufs[i].base, (int)bufs[i].len) != (int)bufs[i].len) {
			fail(st, "TLS write failed");
			return UV_EPROTO;
		}
	}
	return 0;
}

static void on_sock_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	buf->base = sock_scratch;
	buf->len = sizeof(sock_scratch);
}

static void pump(tls_t *st);

static void on_sock_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	tls_t *st = state_of(s);

	if (nread == 0)
		return;
	if (nread > 0) {
		if (BIO_write(st->rbio, buf->base, (int)nread) != (int)nread)
			fail(st, "out of memory");
		st->starved = false;
	} else {
		st->sock_end = (int)nread;
	}
	pump(st);
}

static void sock_update(tls_t *st)
{
	uv_stream_t *s = &st->conn->h->stream;
	bool want = !st->dead && !conn_closing(st) && !st->sock_end && !st->failed &&
	            (!st->hs_done || st->conn_reading) &&
	            BIO_ctrl_pending(st->rbio) < TLS_RBIO_MAX &&
	            s->write_queue_size < TLS_OUT_BACKLOG_MAX;

	if (want && !st->sock_reading) {
		if (uv_read_start(s, on_sock_alloc, on_sock_read) == 0)
			st->sock_reading = true;
	} else if (!want && st->sock_reading) {
		uv_read_stop(s);
		st->sock_reading = false;
	}
}

static void handshake_done(tls_t *st)
{
	const unsigned char *proto = NULL;
	unsigned int proto_len = 0;

	st->hs_done = true;
	if (st->direct) {
		SSL_get0_alpn_selected(st->ssl, &proto, &proto_len);
		if (proto_len == 0) {
			snprintf(st->err, sizeof(st->err),
			         "received direct SSL connection request without ALPN protocol "
			         "negotiation extension");
			fail(st, NULL);
			return;
		}
	}
	if (st->early_len > 0) {
		uv_buf_t b = uv_buf_init((char *)st->early, (unsigned)st->early_len);
		int rc = encrypt(st, &b, 1);

		OPENSSL_cleanse(st->early, st->early_len);
		free(st->early);
		st->early = NULL;
		st->early_len = 0;
		if (rc == 0 && flush_out(st, NULL, NULL) < 0)
			fail(st, "TLS write failed");
	}
}

static void verify_error(tls_t *st)
{
	long v = SSL_get_verify_result(st->ssl);

	if (v != X509_V_OK)
		snprintf(st->err, sizeof(st->err), "certificate verify failed: %s",
		         X509_verify_cert_error_string(v));
}

/* Tells the conn its read ended (EOF, a socket error or a TLS failure), once. */
static void tell_end(tls_t *st, int status)
{
	uv_buf_t b = uv_buf_init(NULL, 0);

	st->end_told = true;
	st->read(&st->conn->h->stream, status, &b);
}

/* Hands the conn the plaintext there is, while it reads. */
static void deliver(tls_t *st)
{
	uv_stream_t *s = &st->conn->h->stream;

	while (st->conn_reading && !st->end_told && !st->dead && !conn_closing(st)) {
		uv_buf_t b;
		char probe;
		int n, e;

		if (st->failed) {
			tell_end(st, st->failed);
			return;
		}
		if (!st->hs_done)
			return;
		if (st->starved) {
			if (st->sock_end)
				tell_end(st, st->sock_end);
			return;
		}
		/* Is there plaintext? (No buffer is taken from the conn for nothing.) */
		ERR_clear_error();
		if (SSL_pending(st->ssl) == 0 && (n = SSL_peek(st->ssl, &probe, 1)) <= 0) {
			e = SSL_get_error(st->ssl, n);
			if (e == SSL_ERROR_WANT_READ) {
				st->starved = true;
				continue;
			}
			if (e == SSL_ERROR_ZERO_RETURN) {
				/* close_notify: the peer's orderly end. */
				st->starved = true;
				if (!st->sock_end)
					st->sock_end = UV_EOF;
				continue;
			}
			fail(st, "TLS read failed");
			continue;
		}
		st->alloc(&st->conn->h->handle, TLS_READ_CHUNK, &b);
		if (b.len == 0 || !b.base) {
			st->read(s, UV_ENOBUFS, &b);
			continue;
		}
		ERR_clear_error();
		n = SSL_read(st->ssl, b.base, b.len > INT_MAX ? INT_MAX : (int)b.len);
		if (n > 0) {
			st->read(s, n, &b);
			continue;
		}
		/* SSL_peek said there was plaintext: this does not happen; treat as a failure. */
		fail(st, "TLS read failed");
		st->read(s, 0, &b);
	}
}

static void pump(tls_t *st)
{
	if (st->dead)
		return;
	if (!st->hs_done && !st->failed && !(st->starved && !st->sock_end)) {
		int r, e;

		ERR_clear_error();
		r = SSL_do_handshake(st->ssl);
		if (flush_out(st, NULL, NULL) < 0 && r == 1)
			fail(st, "TLS write failed");
		if (r == 1) {
			handshake_done(st);
		} else if ((e = SSL_get_error(st->ssl, r)) == SSL_ERROR_WANT_READ) {
			st->starved = true;
			if (st->sock_end) {
				/* Closed mid-handshake. */
				if (!st->err[0])
					snprintf(st->err, sizeof(st->err),
					         "connection closed during the TLS handshake");
				st->failed = st->sock_end == UV_EOF ? UV_EOF : st->sock_end;
			}
		} else {
			verify_error(st);
			fail(st, e == SSL_ERROR_SYSCALL ? "TLS handshake failed"
			                                : "TLS handshake failed");
		}
	}
	deliver(st);
	/* Reading may have made output (KeyUpdate answers, alerts): it goes out now, not only
	 * when the conn next writes. */
	if (!st->dead && st->hs_done && BIO_ctrl_pending(st->wbio) > 0 &&
	    flush_out(st, NULL, NULL) < 0)
		fail(st, "TLS write failed");
	if (!st->dead) {
		sock_update(st);
		want_idle(st);
	}
}

static void on_idle(uv_idle_t *h)
{
	tls_t *st = h->data;

	while (st->done_head && !st->dead) {
		tls_done_t *d = st->done_head;

		st->done_head = d->next;
		if (!st->done_head)
			st->done_tail = NULL;
		d->cb(d->req, d->status);
		free(d);
	}
	if (st->dead)
		return;
	pump(st);
	if (!st->dead && !has_work(st))
		uv_idle_stop(h);
}

static int tls_read_start(pf_transport_t *t, uv_stream_t *s, uv_alloc_cb alloc, uv_read_cb read)
{
	tls_t *st = t->state;

	(void)s;
	st->alloc = alloc;
	st->read = read;
	st->conn_reading = true;
	sock_update(st);
	want_idle(st);
	return 0;
}

static int tls_read_stop(pf_transport_t *t, uv_stream_t *s)
{
	tls_t *st = t->state;

	(void)s;
	st->conn_reading = false;
	sock_update(st);
	return 0;
}

static int tls_try_write(pf_transport_t *t, uv_stream_t *s, const uv_buf_t *bufs, unsigned n)
{
	tls_t *st = t->state;
	size_t total = 0;
	int rc;

	if (st->failed)
		return UV_EPROTO;
	if (!st->hs_done || st->n_out > 0 || s->write_queue_size > 0)
		return UV_EAGAIN;
	for (unsigned i = 0; i < n; i++)
		total += bufs[i].len;
	if (total > INT_MAX)
		return UV_EAGAIN;
	if ((rc = encrypt(st, bufs, n)) < 0 || (rc = flush_out(st, NULL, NULL)) < 0)
		return rc;
	return (int)total;
}

static int tls_write(pf_transport_t *t, uv_write_t *req, uv_stream_t *s, const uv_buf_t *bufs,
                     unsigned n, uv_write_cb cb)
{
	tls_t *st = t->state;
	int rc;

	(void)s;
	if (st->failed)
		return UV_EPROTO;
	if (!st->hs_done) {
		size_t add = 0;
		uint8_t *grown;

		for (unsigned i = 0; i < n; i++)
			add += bufs[i].len;
		if (add > TLS_EARLY_MAX - st->early_len)
			return UV_ENOBUFS;
		grown = realloc(st->early, st->early_len + add + 1);
		if (!grown)
			return UV_ENOMEM;
		st->early = grown;
		for (unsigned i = 0; i < n; i++) {
			memcpy(st->early + st->early_len, bufs[i].base, bufs[i].len);
			st->early_len += bufs[i].len;
		}
		complete_later(st, req, cb, 0);
		return 0;
	}
	if ((rc = encrypt(st, bufs, n)) < 0)
		return rc;
	return flush_out(st, req, cb);
}

static size_t tls_queued(const pf_transport_t *t, const uv_stream_t *s)
{
	const tls_t *st = t->state;

	return s->write_queue_size + st->early_len;
}

static int tls_shutdown(pf_transport_t *t, uv_shutdown_t *req, uv_stream_t *s, uv_shutdown_cb cb)
{
	tls_t *st = t->state;

	if (st->hs_done && !st->failed) {
		ERR_clear_error();
		(void)SSL_shutdown(st->ssl); /* close_notify */
		(void)flush_out(st, NULL, NULL);
	}
	return uv_shutdown(req, s, cb);
}

static void on_idle_closed(uv_handle_t *h)
{
	free(h->data);
}

static void tls_release(pf_transport_t *t)
{
	tls_t *st = t->state;

	if (!st)
		return;
	st->dead = true;
	while (st->done_head) {
		tls_done_t *d = st->done_head;

		st->done_head = d->next;
		free(d);
	}
	if (st->early) {
		OPENSSL_cleanse(st->early, st->early_len);
		free(st->early);
	}
	SSL_free(st->ssl); /* frees both BIOs */
	pf_tls_ctx_unref(st->ctx);
	t->state = NULL;
	uv_close((uv_handle_t *)&st->idle, on_idle_closed);
}

static const pf_transport_ops_t tls_ops = {
        .name = "tls",
        .read_start = tls_read_start,
        .read_stop = tls_read_stop,
        .try_write = tls_try_write,
        .write = tls_write,
        .queued = tls_queued,
        .shutdown = tls_shutdown,
        .release = tls_release,
};

static int tls_begin(pf_conn_t *c, pf_tls_ctx_t *ctx, tls_t **out)
{
	tls_t *st;
	bool was_reading = c->reading;

	assert(c->tp.ops != &tls_ops);
	if (!ctx || !c->handle_open || c->closing)
		return -EINVAL;
	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->ssl = SSL_new(ctx->ssl_ctx);
	st->rbio = BIO_new(BIO_s_mem());
	st->wbio = BIO_new(BIO_s_mem());
	if (!st->ssl || !st->rbio || !st->wbio || uv_idle_init(c->net->loop, &st->idle) < 0) {
		SSL_free(st->ssl);
		BIO_free(st->rbio);
		BIO_free(st->wbio);
		free(st);
		return -ENOMEM;
	}
	BIO_set_mem_eof_return(st->rbio, -1);
	BIO_set_mem_eof_return(st->wbio, -1);
	SSL_set_bio(st->ssl, st->rbio, st->wbio);
	st->idle.data = st;
	st->ctx = pf_tls_ctx_ref(ctx);
	st->conn = c;
	/* The conn's reading moves to the TLS transport: stop the socket's plain reading. */
	if (was_reading)
		c->tp.ops->read_stop(&c->tp, &c->h->stream);
	c->tp.ops = &tls_ops;
	c->tp.state = st;
	if (was_reading) {
		c->reading = false;
		*out = st;
		return 1; /* the caller restarts reading through the new transport */
	}
	*out = st;
	return 0;
}

int pf_tls_accept(pf_conn_t *c, pf_tls_ctx_t *ctx, const uint8_t *initial, size_t len, bool direct)
{
	tls_t *st;
	int rc = tls_begin(c, ctx, &st);

	if (rc < 0)
		return rc;
	SSL_set_accept_state(st->ssl);
	st->direct = direct;
	if (len > 0 && BIO_write(st->rbio, initial, (int)len) != (int)len)
		fail(st, "out of memory");
	pf_conn_resume(c); /* restarts reading through TLS */
	pump(st);
	return 0;
}

/* True when host is a numeric IPv4 or IPv6 address. */
static bool is_ip(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

int pf_tls_connect(pf_conn_t *c, pf_tls_ctx_t *ctx, const char *host)
{
	tls_t *st;
	int rc = tls_begin(c, ctx, &st);

	if (rc < 0)
		return rc;
	SSL_set_connect_state(st->ssl);
	if (host && *host && !is_ip(host))
		SSL_set_tlsext_host_name(st->ssl, host);
	if (ctx->sslmode >= PF_SSLMODE_VERIFY_CA) {
		SSL_set_verify(st->ssl, SSL_VERIFY_PEER, NULL);
		if (ctx->sslmode == PF_SSLMODE_VERIFY_FULL && host && *host) {
			X509_VERIFY_PARAM *vp = SSL_get0_param(st->ssl);

			if (is_ip(host))
				X509_VERIFY_PARAM_set1_ip_asc(vp, host);
			else
				SSL_set1_host(st->ssl, host);
		}
	} else {
		SSL_set_verify(st->ssl, SSL_VERIFY_NONE, NULL);
	}
	pf_conn_resume(c);
	pump(st);
	return 0;
}

bool pf_tls_is_on(const pf_conn_t *c)
{
	return c->tp.ops == &tls_ops;
}

const char *pf_tls_error(const pf_conn_t *c)
{
	const tls_t *st = pf_tls_is_on(c) ? c->tp.state : NULL;

	return st && st->err[0] ? st->err : NULL;
}

void pf_tls_describe(const pf_conn_t *c, char *buf, size_t n)
{
	const tls_t *st = pf_tls_is_on(c) ? c->tp.state : NULL;
	const SSL_CIPHER *cipher;
	int group;
	const char *gname = NULL;

	if (n == 0)
		return;
	buf[0] = '\0';
	if (!st || !st->hs_done)
		return;
	cipher = SSL_get_current_cipher(st->ssl);
	/* As PgBouncer: the key exchange group is named for TLS 1.2 and older, on our accepting
	 * side only (with TLS 1.3 the suite does not imply one). */
	group = SSL_version(st->ssl) < TLS1_3_VERSION && st->ctx->accept
	                ? SSL_get_negotiated_group(st->ssl)
	                : 0;
	if (group > 0)
		gname = OBJ_nid2sn(group);
	snprintf(buf, n, "%s/%s%s%s", SSL_get_version(st->ssl),
	         cipher ? SSL_CIPHER_get_name(cipher) : "", gname ? "/ECDH=" : "",
	         gname ? gname : "");
}

int pf_tls_server_end_point(const pf_conn_t *c, uint8_t *out, size_t cap)
{
	const tls_t *st = pf_tls_is_on(c) ? c->tp.state : NULL;
	X509 *cert;
	int md_nid = NID_undef, pk_nid;
	const EVP_MD *md;
	unsigned int len = 0;

	if (!st || !st->hs_done)
		return -ENOTCONN;
	cert = SSL_get_certificate(st->ssl);
	if (!cert)
		return -ENOENT;
	/* RFC 5929: the certificate's signature hash, MD5 and SHA-1 replaced by SHA-256. */
	if (!OBJ_find_sigid_algs(X509_get_signature_nid(cert), &md_nid, &pk_nid))
		return -ENOTSUP;
	if (md_nid == NID_md5 || md_nid == NID_sha1)
		md_nid = NID_sha256;
	md = EVP_get_digestbynid(md_nid);
	if (!md || (size_t)EVP_MD_get_size(md) > cap)
		return -ENOTSUP;
	if (X509_digest(cert, md, out, &len) != 1)
		return -ENOMEM;
	return (int)len;
}

int pf_tls_peer_common_name(const pf_conn_t *c, char *buf, size_t n)
{
	const tls_t *st = pf_tls_is_on(c) ? c->tp.state : NULL;
	X509 *cert;
	int len;

	if (n)
		buf[0] = '\0';
	if (!st || !st->hs_done)
		return -ENOENT;
	cert = SSL_get0_peer_certificate(st->ssl);
	if (!cert || SSL_get_verify_result(st->ssl) != X509_V_OK)
		return -ENOENT;
	len = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, buf,
	                                (int)(n > INT_MAX ? INT_MAX : n));
	if (len < 0 || (size_t)len >= n || strlen(buf) != (size_t)len) {
		/* None, too long, or with a NUL inside: no name. */
		if (n)
			buf[0] = '\0';
		return -ENOENT;
	}
	return 0;
}

int pf_tls_peer_subject(const pf_conn_t *c, char *buf, size_t n)
{
	const tls_t *st = pf_tls_is_on(c) ? c->tp.state : NULL;
	X509 *cert;
	BIO *mem;
	char *data = NULL;
	long len;
	int rc = -ENOENT;

	if (n)
		buf[0] = '\0';
	if (!st || !st->hs_done)
		return -ENOENT;
	cert = SSL_get0_peer_certificate(st->ssl);
	if (!cert || SSL_get_verify_result(st->ssl) != X509_V_OK || !(mem = BIO_new(BIO_s_mem())))
		return -ENOENT;
	if (X509_NAME_print_ex(mem, X509_get_subject_name(cert), 0,
	                       XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0 &&
	    (len = BIO_get_mem_data(mem, &data)) > 0 && (size_t)len < n &&
	    !memchr(data, '\0', (size_t)len)) {
		memcpy(buf, data, (size_t)len);
		buf[len] = '\0';
		rc = 0;
	}
	BIO_free(mem);
	return rc;
}
