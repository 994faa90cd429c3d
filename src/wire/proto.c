#include "pfbuild.h"
/*
 * proto: PostgreSQL protocol 3.0 codec (see include/pgfunnel/proto.h).
 *
 * Owns no state beyond what callers pass in. Parsers take (pointer, length) views of bytes the
 * caller received and return pointers into them; they never read past `len` and never write.
 * Builders append complete messages to a pf_buf_t, whose sticky `failed` flag carries any
 * error (including misuse such as an unknown column type) to the caller's single check.
 * Callers: the client state machine (startup, message headers, errors it sends), the server
 * state machine (startup and auth toward Postgres, ParameterStatus, ReadyForQuery), the admin
 * console (result sets), and the fuzz targets.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "pgfunnel/proto.h"

static uint32_t get_u32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
	       (uint32_t)p[3];
}

/* ---- Startup packet ---- */

/*
 * Parses the parameter list of a StartupMessage, data[8..plen). The layout check follows
 * Postgres' ProcessStartupPacket: pairs of Strings, then a single NUL that must be the last byte.
 * An empty name is the terminator, so an empty name before the end is a layout error.
 */
static int parse_startup_params(const uint8_t *data, size_t plen, pf_proto_startup_t *out)
{
	size_t off = 8;

	for (;;) {
		const uint8_t *name_end, *value_end;
		size_t voff;

		if (off >= plen)
			return -EBADMSG; /* no terminator */
		if (data[off] == 0) {
			if (off != plen - 1)
				return -EBADMSG; /* terminator not last, or an empty name */
			return 0;
		}
		name_end = memchr(data + off, 0, plen - off);
		if (!name_end)
			return -EBADMSG;
		voff = (size_t)(name_end - data) + 1;
		if (voff >= plen)
			return -EBADMSG; /* a name without a value */
		value_end = memchr(data + voff, 0, plen - voff);
		if (!value_end)
			return -EBADMSG;
		if (out->nparams == PF_PROTO_STARTUP_MAX_PARAMS)
			return -E2BIG;
		out->params[out->nparams].name = (const char *)(data + off);
		out->params[out->nparams].value = (const char *)(data + voff);
		out->nparams++;
		off = (size_t)(value_end - data) + 1;
	}
}

int pf_proto_parse_startup(const uint8_t *data, size_t len, pf_proto_startup_t *out)
{
	uint32_t plen, code;
	int rc;

	if (len < 4)
		return 0;
	/* Postgres: "invalid length of startup packet" when < 8 or > MAX_STARTUP_PACKET_LENGTH. */
	plen = get_u32(data);
	if (plen < 8 || plen > PF_PROTO_STARTUP_MAX)
		return -EMSGSIZE;
	if (len < 8)
		return 0;
	code = get_u32(data + 4);

	memset(out, 0, sizeof(*out));
	switch (code) {
	case PF_PROTO_SSL_REQUEST_CODE:
	case PF_PROTO_GSSENC_REQUEST_CODE:
		if (plen != 8)
			return -EMSGSIZE;
		out->kind = code == PF_PROTO_SSL_REQUEST_CODE ? PF_PROTO_STARTUP_SSL
		                                              : PF_PROTO_STARTUP_GSSENC;
		return 8;
	case PF_PROTO_CANCEL_REQUEST_CODE:
		if (plen != 16)
			return -EMSGSIZE;
		if (len < 16)
			return 0;
		out->kind = PF_PROTO_STARTUP_CANCEL;
		out->cancel_pid = get_u32(data + 8);
		out->cancel_key = get_u32(data + 12);
		return 16;
	default:
		break;
	}

	/*
	 * Any minor of major 3 is accepted: Postgres answers a newer minor with
	 * NegotiateProtocolVersion and continues with the one it speaks. 2.0 and unknown request
	 * codes (whose "major" is 1234) are refused.
	 */
	if (code >> 16 != 3)
		return -EPROTONOSUPPORT;
	if (len < plen)
		return 0;
	out->kind = PF_PROTO_STARTUP_NORMAL;
	out->major = 3;
	out->minor = (uint16_t)(code & 0xffff);

	rc = parse_startup_params(data, plen, out);
	if (rc < 0)
		return rc;

	out->user = pf_proto_startup_get(out, "user");
	out->database = pf_proto_startup_get(out, "database");
	out->options = pf_proto_startup_get(out, "options");
	out->replication = pf_proto_startup_get(out, "replication");
	if (!out->user || out->user[0] == '\0')
		return -EINVAL;
	if (!out->database || out->database[0] == '\0')
		out->database = out->user;
	return (int)plen;
}

const char *pf_proto_startup_get(const pf_proto_startup_t *s, const char *name)
{
	size_t i;

	for (i = s->nparams; i > 0; i--) {
		if (strcmp(s->params[i - 1].name, name) == 0)
			return s->params[i - 1].value;
	}
	return NULL;
}

bool pf_proto_is_protocol_option(const char *name)
{
	return strncmp(name, "_pq_.", 5) == 0;
}

/* ---- Message headers ---- */

void pf_proto_hdr_reader_init(pf_proto_hdr_reader_t *r)
{
	memset(r, 0, sizeof(*r));
}

int pf_proto_read_header(const uint8_t *data, size_t len, uint32_t max_packet_size,
                         pf_proto_hdr_t *out)
{
	uint32_t mlen;

	if (len < PF_PROTO_HDR_LEN)
		return 0;
	mlen = get_u32(data + 1);
	if (data[0] == 0 || mlen < 4)
		return -EBADMSG;
	/* The second test holds even for a caller passing an unbounded max_packet_size. */
	if (mlen > max_packet_size || mlen > PF_PROTO_MAX_MSG_LEN)
		return -EMSGSIZE;
	out->type = data[0];
	out->len = mlen;
	out->payload_len = mlen - 4;
	out->total = mlen + 1;
	return PF_PROTO_HDR_LEN;
}

int pf_proto_hdr_feed(pf_proto_hdr_reader_t *r, const uint8_t *data, size_t len, size_t *consumed,
                      uint32_t max_packet_size, pf_proto_hdr_t *out)
{
	size_t n;
	int rc;

	if (r->have == 0 && len >= PF_PROTO_HDR_LEN) {
		*consumed = PF_PROTO_HDR_LEN;
		rc = pf_proto_read_header(data, len, max_packet_size, out);
		return rc < 0 ? rc : 1;
	}
	n = PF_PROTO_HDR_LEN - r->have;
	if (n > len)
		n = len;
	if (n > 0)
		memcpy(r->bytes + r->have, data, n);
	r->have = (uint8_t)(r->have + n);
	*consumed = n;
	if (r->have < PF_PROTO_HDR_LEN)
		return 0;
	r->have = 0;
	rc = pf_proto_read_header(r->bytes, PF_PROTO_HDR_LEN, max_packet_size, out);
	return rc < 0 ? rc : 1;
}

bool pf_proto_is_fe_type(uint8_t t)
{
	switch (t) {
	case PF_PROTO_FE_BIND:
	case PF_PROTO_FE_CLOSE:
	case PF_PROTO_FE_COPY_DATA:
	case PF_PROTO_FE_COPY_DONE:
	case PF_PROTO_FE_COPY_FAIL:
	case PF_PROTO_FE_DESCRIBE:
	case PF_PROTO_FE_EXECUTE:
	case PF_PROTO_FE_FLUSH:
	case PF_PROTO_FE_FUNCTION_CALL:
	case PF_PROTO_FE_PASSWORD_MESSAGE: /* also GSSResponse, SASL(Initial)Response */
	case PF_PROTO_FE_PARSE:
	case PF_PROTO_FE_QUERY:
	case PF_PROTO_FE_SYNC:
	case PF_PROTO_FE_TERMINATE:
		return true;
	default:
		return false;
	}
}

bool pf_proto_is_be_type(uint8_t t)
{
	switch (t) {
	case PF_PROTO_BE_AUTHENTICATION:
	case PF_PROTO_BE_BACKEND_KEY_DATA:
	case PF_PROTO_BE_BIND_COMPLETE:
	case PF_PROTO_BE_CLOSE_COMPLETE:
	case PF_PROTO_BE_COMMAND_COMPLETE:
	case PF_PROTO_BE_COPY_DATA:
	case PF_PROTO_BE_COPY_DONE:
	case PF_PROTO_BE_COPY_IN_RESPONSE:
	case PF_PROTO_BE_COPY_OUT_RESPONSE:
	case PF_PROTO_BE_COPY_BOTH_RESPONSE:
	case PF_PROTO_BE_DATA_ROW:
	case PF_PROTO_BE_EMPTY_QUERY_RESPONSE:
	case PF_PROTO_BE_ERROR_RESPONSE:
	case PF_PROTO_BE_FUNCTION_CALL_RESPONSE:
	case PF_PROTO_BE_NEGOTIATE_PROTOCOL_VERSION:
	case PF_PROTO_BE_NO_DATA:
	case PF_PROTO_BE_NOTICE_RESPONSE:
	case PF_PROTO_BE_NOTIFICATION_RESPONSE:
	case PF_PROTO_BE_PARAMETER_DESCRIPTION:
	case PF_PROTO_BE_PARAMETER_STATUS:
	case PF_PROTO_BE_PARSE_COMPLETE:
	case PF_PROTO_BE_PORTAL_SUSPENDED:
	case PF_PROTO_BE_READY_FOR_QUERY:
	case PF_PROTO_BE_ROW_DESCRIPTION:
		return true;
	default:
		return false;
	}
}

/* ---- Backend builders ---- */

static void put_field(pf_buf_t *b, uint8_t code, const char *value)
{
	pf_buf_put_u8(b, code);
	pf_buf_put_str(b, value);
}

/*
 * ErrorResponse and NoticeResponse share one layout. The severity goes out twice: S (which
 * Postgres localizes) and V (never localized, since 9.6), so clients reading either see it.
 */
static void be_error_like(pf_buf_t *b, uint8_t type, const char *severity, const char *sqlstate,
                          const char *message, const char *detail, const char *hint)
{
	size_t start = pf_buf_msg_begin(b, type);

	put_field(b, 'S', severity);
	put_field(b, 'V', severity);
	put_field(b, 'C', sqlstate);
	put_field(b, 'M', message);
	if (detail)
		put_field(b, 'D', detail);
	if (hint)
		put_field(b, 'H', hint);
	pf_buf_put_u8(b, 0);
	pf_buf_msg_end(b, start);
}

void pf_proto_be_error(pf_buf_t *b, const char *severity, const char *sqlstate, const char *message,
                       const char *detail, const char *hint)
{
	be_error_like(b, PF_PROTO_BE_ERROR_RESPONSE, severity, sqlstate, message, detail, hint);
}

void pf_proto_be_notice(pf_buf_t *b, const char *severity, const char *sqlstate,
                        const char *message, const char *detail, const char *hint)
{
	be_error_like(b, PF_PROTO_BE_NOTICE_RESPONSE, severity, sqlstate, message, detail, hint);
}

static void be_auth(pf_buf_t *b, uint32_t subtype, const void *data, size_t len)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_AUTHENTICATION);

	pf_buf_put_u32(b, subtype);
	pf_buf_put_bytes(b, data, len);
	pf_buf_msg_end(b, start);
}

void pf_proto_be_auth_ok(pf_buf_t *b)
{
	be_auth(b, PF_PROTO_AUTH_OK, NULL, 0);
}

void pf_proto_be_auth_cleartext(pf_buf_t *b)
{
	be_auth(b, PF_PROTO_AUTH_CLEARTEXT, NULL, 0);
}

void pf_proto_be_auth_md5(pf_buf_t *b, const uint8_t salt[4])
{
	be_auth(b, PF_PROTO_AUTH_MD5, salt, 4);
}

void pf_proto_be_auth_sasl(pf_buf_t *b, const char *const *mechs, size_t n)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_AUTHENTICATION);
	size_t i;

	pf_buf_put_u32(b, PF_PROTO_AUTH_SASL);
	for (i = 0; i < n; i++)
		pf_buf_put_str(b, mechs[i]);
	pf_buf_put_u8(b, 0);
	pf_buf_msg_end(b, start);
}

void pf_proto_be_auth_sasl_continue(pf_buf_t *b, const void *data, size_t len)
{
	be_auth(b, PF_PROTO_AUTH_SASL_CONTINUE, data, len);
}

void pf_proto_be_auth_sasl_final(pf_buf_t *b, const void *data, size_t len)
{
	be_auth(b, PF_PROTO_AUTH_SASL_FINAL, data, len);
}

void pf_proto_be_parameter_status(pf_buf_t *b, const char *name, const char *value)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_PARAMETER_STATUS);

	pf_buf_put_str(b, name);
	pf_buf_put_str(b, value);
	pf_buf_msg_end(b, start);
}

void pf_proto_be_backend_key_data(pf_buf_t *b, uint32_t pid, uint32_t key)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_BACKEND_KEY_DATA);

	pf_buf_put_u32(b, pid);
	pf_buf_put_u32(b, key);
	pf_buf_msg_end(b, start);
}

void pf_proto_be_ready_for_query(pf_buf_t *b, uint8_t status)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_READY_FOR_QUERY);

	pf_buf_put_u8(b, status);
	pf_buf_msg_end(b, start);
}

/* Type OID and typlen for a typed-column char; false for an unknown char. */
static bool column_type(char c, uint32_t *oid, int16_t *typlen)
{
	switch (c) {
	case 's':
		*oid = PF_PROTO_OID_TEXT;
		*typlen = -1;
		return true;
	case 'i':
		*oid = PF_PROTO_OID_INT4;
		*typlen = 4;
		return true;
	case 'q':
		*oid = PF_PROTO_OID_INT8;
		*typlen = 8;
		return true;
	case 'N':
		*oid = PF_PROTO_OID_NUMERIC;
		*typlen = -1;
		return true;
	case 'b':
		*oid = PF_PROTO_OID_BOOL;
		*typlen = 1;
		return true;
	default:
		return false;
	}
}

/* The Int16 column count of RowDescription/DataRow; too many columns fail the builder. */
static void put_column_count(pf_buf_t *b, size_t n)
{
	if (n > INT16_MAX) {
		b->failed = true;
		return;
	}
	pf_buf_put_u16(b, (uint16_t)n);
}

void pf_proto_be_row_description(pf_buf_t *b, const char *types, const char *const *names)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_ROW_DESCRIPTION);
	size_t i, n = strlen(types);

	put_column_count(b, n);
	for (i = 0; i < n && !b->failed; i++) {
		uint32_t oid;
		int16_t typlen;

		if (!column_type(types[i], &oid, &typlen)) {
			b->failed = true;
			break;
		}
		pf_buf_put_str(b, names[i]);
		pf_buf_put_u32(b, 0);                /* table OID: not a table column */
		pf_buf_put_u16(b, 0);                /* attribute number */
		pf_buf_put_u32(b, oid);              /* data type OID */
		pf_buf_put_u16(b, (uint16_t)typlen); /* typlen, two's complement */
		pf_buf_put_i32(b, -1);               /* typmod: none */
		pf_buf_put_u16(b, 0);                /* format: text */
	}
	pf_buf_msg_end(b, start);
}

/* One DataRow column value in text format: Int32 length, then the bytes. */
static void put_column_value(pf_buf_t *b, const char *s, size_t n)
{
	if (n > INT32_MAX) {
		b->failed = true;
		return;
	}
	pf_buf_put_u32(b, (uint32_t)n);
	pf_buf_put_bytes(b, s, n);
}

void pf_proto_be_data_row_v(pf_buf_t *b, const char *types, va_list ap)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_DATA_ROW);
	size_t i, n = strlen(types);
	char num[32];
	const char *s;
	int k;

	put_column_count(b, n);
	for (i = 0; i < n && !b->failed; i++) {
		switch (types[i]) {
		case 's':
			s = va_arg(ap, const char *);
			if (s)
				put_column_value(b, s, strlen(s));
			else
				pf_buf_put_i32(b, -1); /* SQL NULL */
			continue;
		case 'i':
			k = snprintf(num, sizeof(num), "%" PRId32, va_arg(ap, int32_t));
			break;
		case 'q':
			k = snprintf(num, sizeof(num), "%" PRId64, va_arg(ap, int64_t));
			break;
		case 'N':
			k = snprintf(num, sizeof(num), "%" PRIu64, va_arg(ap, uint64_t));
			break;
		case 'b':
			k = snprintf(num, sizeof(num), "%s", va_arg(ap, int) ? "t" : "f");
			break;
		default:
			b->failed = true;
			continue;
		}
		put_column_value(b, num, (size_t)k);
	}
	pf_buf_msg_end(b, start);
}

void pf_proto_be_data_row(pf_buf_t *b, const char *types, ...)
{
	va_list ap;

	va_start(ap, types);
	pf_proto_be_data_row_v(b, types, ap);
	va_end(ap);
}

void pf_proto_be_command_complete(pf_buf_t *b, const char *tag)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_COMMAND_COMPLETE);

	pf_buf_put_str(b, tag);
	pf_buf_msg_end(b, start);
}

void pf_proto_be_empty_query(pf_buf_t *b)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_EMPTY_QUERY_RESPONSE);

	pf_buf_msg_end(b, start);
}

void pf_proto_be_negotiate_protocol_version(pf_buf_t *b, uint32_t version,
                                            const char *const *unrecognized, size_t n)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_BE_NEGOTIATE_PROTOCOL_VERSION);
	size_t i;

	if (n > INT32_MAX) {
		b->failed = true;
		return;
	}
	pf_buf_put_u32(b, version);
	pf_buf_put_u32(b, (uint32_t)n);
	for (i = 0; i < n; i++)
		pf_buf_put_str(b, unrecognized[i]);
	pf_buf_msg_end(b, start);
}

/* ---- Frontend builders ---- */

void pf_proto_fe_startup(pf_buf_t *b, const pf_proto_param_t *params, size_t n)
{
	size_t start = b->len;
	size_t i;

	/* No type byte: the length (counting itself) comes first, then the version. */
	pf_buf_put_u32(b, 0);
	pf_buf_put_u32(b, PF_PROTO_VERSION_3_0);
	for (i = 0; i < n; i++) {
		pf_buf_put_str(b, params[i].name);
		pf_buf_put_str(b, params[i].value);
	}
	pf_buf_put_u8(b, 0);
	if (!b->failed && b->len - start > PF_PROTO_STARTUP_MAX) {
		b->failed = true; /* the server would refuse it */
		return;
	}
	pf_buf_set_u32(b, start, (uint32_t)(b->len - start));
}

void pf_proto_fe_password(pf_buf_t *b, const char *password)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_FE_PASSWORD_MESSAGE);

	pf_buf_put_str(b, password);
	pf_buf_msg_end(b, start);
}

void pf_proto_fe_sasl_initial_response(pf_buf_t *b, const char *mech, const void *data, size_t len)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_FE_SASL_INITIAL_RESPONSE);

	pf_buf_put_str(b, mech);
	if (!data) {
		pf_buf_put_i32(b, -1);
	} else if (len > INT32_MAX) {
		b->failed = true;
	} else {
		pf_buf_put_u32(b, (uint32_t)len);
		pf_buf_put_bytes(b, data, len);
	}
	pf_buf_msg_end(b, start);
}

void pf_proto_fe_sasl_response(pf_buf_t *b, const void *data, size_t len)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_FE_SASL_RESPONSE);

	pf_buf_put_bytes(b, data, len);
	pf_buf_msg_end(b, start);
}

void pf_proto_fe_query(pf_buf_t *b, const char *sql)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_FE_QUERY);

	pf_buf_put_str(b, sql);
	pf_buf_msg_end(b, start);
}

void pf_proto_fe_ext_query(pf_buf_t *b, const char *sql, const char *const *params, size_t n)
{
	size_t start;

	if (n > UINT16_MAX) {
		b->failed = true;
		return;
	}
	start = pf_buf_msg_begin(b, PF_PROTO_FE_PARSE);
	pf_buf_put_str(b, ""); /* the unnamed statement */
	pf_buf_put_str(b, sql);
	pf_buf_put_u16(b, 0); /* no parameter types given: the server infers them */
	pf_buf_msg_end(b, start);

	start = pf_buf_msg_begin(b, PF_PROTO_FE_BIND);
	pf_buf_put_str(b, ""); /* the unnamed portal */
	pf_buf_put_str(b, ""); /* of the unnamed statement */
	pf_buf_put_u16(b, 0);  /* every parameter in text format */
	pf_buf_put_u16(b, (uint16_t)n);
	for (size_t i = 0; i < n; i++) {
		size_t len = params[i] ? strlen(params[i]) : 0;

		if (len > INT32_MAX) {
			b->failed = true;
			return;
		}
		pf_buf_put_i32(b, params[i] ? (int32_t)len : -1);
		pf_buf_put_bytes(b, params[i], len);
	}
	pf_buf_put_u16(b, 0); /* every result column in text format */
	pf_buf_msg_end(b, start);

	start = pf_buf_msg_begin(b, PF_PROTO_FE_DESCRIBE);
	pf_buf_put_u8(b, 'P');
	pf_buf_put_str(b, "");
	pf_buf_msg_end(b, start);

	start = pf_buf_msg_begin(b, PF_PROTO_FE_EXECUTE);
	pf_buf_put_str(b, "");
	pf_buf_put_u32(b, 0); /* no row limit */
	pf_buf_msg_end(b, start);

	start = pf_buf_msg_begin(b, PF_PROTO_FE_SYNC);
	pf_buf_msg_end(b, start);
}

void pf_proto_fe_terminate(pf_buf_t *b)
{
	size_t start = pf_buf_msg_begin(b, PF_PROTO_FE_TERMINATE);

	pf_buf_msg_end(b, start);
}

void pf_proto_fe_cancel_request(pf_buf_t *b, uint32_t pid, uint32_t key)
{
	pf_buf_put_u32(b, 16);
	pf_buf_put_u32(b, PF_PROTO_CANCEL_REQUEST_CODE);
	pf_buf_put_u32(b, pid);
	pf_buf_put_u32(b, key);
}

void pf_proto_fe_ssl_request(pf_buf_t *b)
{
	pf_buf_put_u32(b, 8);
	pf_buf_put_u32(b, PF_PROTO_SSL_REQUEST_CODE);
}

/* ---- Payload readers ---- */

int pf_proto_parse_error_fields(const uint8_t *payload, size_t len, pf_proto_error_t *out)
{
	size_t off = 0;

	memset(out, 0, sizeof(*out));
	for (;;) {
		const uint8_t *end;
		const char *value;
		uint8_t code;

		if (off >= len)
			return -EBADMSG; /* no terminator */
		code = payload[off];
		if (code == 0)
			break;
		off++;
		end = off < len ? memchr(payload + off, 0, len - off) : NULL;
		if (!end)
			return -EBADMSG;
		value = (const char *)(payload + off);
		off = (size_t)(end - payload) + 1;
		switch (code) {
		case 'S':
			out->severity_localized = value;
			break;
		case 'V':
			out->severity = value;
			break;
		case 'C':
			out->sqlstate = value;
			break;
		case 'M':
			out->message = value;
			break;
		case 'D':
			out->detail = value;
			break;
		case 'H':
			out->hint = value;
			break;
		case 'P':
			out->position = value;
			break;
		case 'W':
			out->where = value;
			break;
		default:
			break; /* "frontends should silently ignore fields of unrecognized type" */
		}
	}
	if (off != len - 1)
		return -EBADMSG;
	if (!out->severity)
		out->severity = out->severity_localized;
	return 0;
}

int pf_proto_parse_parameter_status(const uint8_t *payload, size_t len, const char **name,
                                    const char **value)
{
	const uint8_t *e1, *e2;
	size_t voff;

	e1 = len ? memchr(payload, 0, len) : NULL;
	if (!e1)
		return -EBADMSG;
	voff = (size_t)(e1 - payload) + 1;
	e2 = voff < len ? memchr(payload + voff, 0, len - voff) : NULL;
	if (!e2 || (size_t)(e2 - payload) != len - 1)
		return -EBADMSG;
	*name = (const char *)payload;
	*value = (const char *)(payload + voff);
	return 0;
}

int pf_proto_parse_backend_key_data(const uint8_t *payload, size_t len, uint32_t *pid,
                                    uint32_t *key)
{
	if (len != 8)
		return -EBADMSG;
	*pid = get_u32(payload);
	*key = get_u32(payload + 4);
	return 0;
}

int pf_proto_parse_password(const uint8_t *payload, size_t len, const char **password)
{
	/* Exactly one NUL, the last byte: a password cannot hide bytes after its end. */
	if (len == 0 || memchr(payload, 0, len) != payload + len - 1)
		return -EBADMSG;
	*password = (const char *)payload;
	return 0;
}

int pf_proto_parse_sasl_initial_response(const uint8_t *payload, size_t len, const char **mech,
                                         const uint8_t **data, size_t *data_len)
{
	const uint8_t *nul = memchr(payload, 0, len);
	size_t rest;
	uint32_t n;

	if (!nul || nul == payload)
		return -EBADMSG;
	rest = len - (size_t)(nul + 1 - payload);
	if (rest < 4)
		return -ENODATA;
	n = (uint32_t)nul[1] << 24 | (uint32_t)nul[2] << 16 | (uint32_t)nul[3] << 8 | nul[4];
	if (n == UINT32_MAX) {
		if (rest != 4)
			return -EMSGSIZE;
		*data = NULL;
		*data_len = 0;
	} else {
		/* Any other negative Int32 reads as more bytes than there are. */
		if (n > rest - 4)
			return -ENODATA;
		if (n < rest - 4)
			return -EMSGSIZE;
		*data = nul + 5;
		*data_len = n;
	}
	*mech = (const char *)payload;
	return 0;
}

int pf_proto_parse_data_row(const uint8_t *payload, size_t len, pf_proto_col_t *cols, size_t max,
                            uint16_t *ncols)
{
	size_t off = 2;
	uint16_t n;

	if (len < 2)
		return -EBADMSG;
	n = (uint16_t)((payload[0] << 8) | payload[1]);
	for (uint16_t i = 0; i < n; i++) {
		uint32_t clen;

		if (len - off < 4)
			return -EBADMSG;
		clen = get_u32(payload + off);
		off += 4;
		if (clen == UINT32_MAX) {
			if (i < max)
				cols[i] = (pf_proto_col_t){NULL, 0};
			continue;
		}
		/* Any other length beyond the payload, including "negative" ones, is malformed. */
		if (clen > len - off)
			return -EBADMSG;
		if (i < max)
			cols[i] = (pf_proto_col_t){payload + off, clen};
		off += clen;
	}
	if (off != len)
		return -EBADMSG;
	*ncols = n;
	return 0;
}

int pf_proto_parse_row_description(const uint8_t *payload, size_t len, uint16_t *ncols)
{
	size_t off = 2;
	uint16_t n;

	if (len < 2)
		return -EBADMSG;
	n = (uint16_t)((payload[0] << 8) | payload[1]);
	for (uint16_t i = 0; i < n; i++) {
		const uint8_t *nul = memchr(payload + off, 0, len - off);

		if (!nul)
			return -EBADMSG;
		off = (size_t)(nul - payload) + 1;
		if (len - off < 18)
			return -EBADMSG;
		off += 18;
	}
	if (off != len)
		return -EBADMSG;
	*ncols = n;
	return 0;
}

int pf_proto_parse_ready_for_query(const uint8_t *payload, size_t len, uint8_t *status)
{
	if (len != 1)
		return -EBADMSG;
	switch (payload[0]) {
	case PF_PROTO_TX_IDLE:
	case PF_PROTO_TX_BLOCK:
	case PF_PROTO_TX_FAILED:
		*status = payload[0];
		return 0;
	default:
		return -EBADMSG;
	}
}

/* A SASL mechanism list: one or more non-empty Strings, then a NUL as the last byte. */
static bool is_valid_name_list(const uint8_t *p, size_t len)
{
	size_t off = 0, count = 0;

	for (;;) {
		const uint8_t *end;

		if (off >= len)
			return false;
		if (p[off] == 0)
			return off == len - 1 && count > 0;
		end = memchr(p + off, 0, len - off);
		if (!end)
			return false;
		off = (size_t)(end - p) + 1;
		count++;
	}
}

int pf_proto_parse_auth(const uint8_t *payload, size_t len, pf_proto_auth_t *out)
{
	if (len < 4)
		return -EBADMSG;
	out->subtype = get_u32(payload);
	out->rest = payload + 4;
	out->rest_len = len - 4;
	switch (out->subtype) {
	case PF_PROTO_AUTH_OK:
	case PF_PROTO_AUTH_KERBEROS_V5:
	case PF_PROTO_AUTH_CLEARTEXT:
	case PF_PROTO_AUTH_SCM_CREDENTIAL:
	case PF_PROTO_AUTH_GSS:
	case PF_PROTO_AUTH_SSPI:
		return out->rest_len == 0 ? 0 : -EBADMSG;
	case PF_PROTO_AUTH_MD5:
		return out->rest_len == 4 ? 0 : -EBADMSG;
	case PF_PROTO_AUTH_SASL:
		return is_valid_name_list(out->rest, out->rest_len) ? 0 : -EBADMSG;
	default:
		return 0; /* continue/final data, or a subtype the caller refuses */
	}
}

bool pf_proto_auth_has_sasl_mech(const pf_proto_auth_t *a, const char *mech)
{
	size_t off = 0;

	if (a->subtype != PF_PROTO_AUTH_SASL)
		return false;
	while (off < a->rest_len && a->rest[off] != 0) {
		const char *name = (const char *)(a->rest + off);
		const uint8_t *end = memchr(a->rest + off, 0, a->rest_len - off);

		if (!end)
			return false;
		if (strcmp(name, mech) == 0)
			return true;
		off = (size_t)(end - a->rest) + 1;
	}
	return false;
}

/* ---- Statement and portal names in extended-protocol messages ---- */

/*
 * Finds the NUL ending the name that starts at *off, looking at msg[*off, lim) where lim is
 * min(avail, total). Returns 1 with *off just past the NUL, 0 when more bytes are needed, or
 * -EBADMSG when the whole message is at hand and has no NUL there.
 */
static int scan_name(const uint8_t *msg, size_t lim, uint32_t total, uint32_t *off, uint32_t *len)
{
	const uint8_t *nul;

	if (*off >= lim)
		return *off >= total ? -EBADMSG : 0;
	nul = memchr(msg + *off, 0, lim - *off);
	if (!nul)
		return lim >= total ? -EBADMSG : 0;
	*len = (uint32_t)(nul - (msg + *off));
	*off += *len + 1;
	return 1;
}

int pf_proto_read_names(const uint8_t *msg, size_t avail, pf_proto_names_t *out)
{
	uint32_t len, total, off = PF_PROTO_HDR_LEN, first_len = 0, second_len = 0, rest;
	size_t lim;
	uint8_t type, kind = 0;
	int rc;

	if (avail < 1)
		return 0;
	type = msg[0];
	switch (type) {
	case PF_PROTO_FE_PARSE:
	case PF_PROTO_FE_BIND:
	case PF_PROTO_FE_DESCRIBE:
	case PF_PROTO_FE_CLOSE:
	case PF_PROTO_FE_EXECUTE:
		break;
	default:
		return -EINVAL;
	}
	if (avail < PF_PROTO_HDR_LEN)
		return 0;
	len = get_u32(msg + 1);
	if (len < 4 || len > PF_PROTO_MAX_MSG_LEN)
		return -EBADMSG;
	total = len + 1;
	lim = avail < total ? avail : total;
	if (type == PF_PROTO_FE_DESCRIBE || type == PF_PROTO_FE_CLOSE) {
		if (total <= off)
			return -EBADMSG;
		if (lim <= off)
			return 0;
		kind = msg[off++];
		if (kind != 'S' && kind != 'P')
			return -EBADMSG;
	}
	rc = scan_name(msg, lim, total, &off, &first_len);
	if (rc <= 0)
		return rc;
	if (type == PF_PROTO_FE_BIND) {
		rc = scan_name(msg, lim, total, &off, &second_len);
		if (rc <= 0)
			return rc;
	}
	/* What must follow the names (protocol-message-formats). */
	if (off > total) /* cannot happen: names are searched within the message only */
		return -EBADMSG;
	rest = total - off;
	switch (type) {
	case PF_PROTO_FE_PARSE:
		if (rest < 3) /* the query String (at least its NUL), Int16 parameter count */
			return -EBADMSG;
		break;
	case PF_PROTO_FE_BIND:
		if (rest < 6) /* three Int16 counts: formats, parameters, result formats */
			return -EBADMSG;
		break;
	case PF_PROTO_FE_EXECUTE:
		if (rest != 4) /* Int32 row limit */
			return -EBADMSG;
		break;
	default:
		if (rest != 0)
			return -EBADMSG;
		break;
	}
	memset(out, 0, sizeof(*out));
	out->type = type;
	out->kind = kind;
	out->total = total;
	out->end = off;
	switch (type) {
	case PF_PROTO_FE_PARSE:
		out->stmt = (const char *)msg + PF_PROTO_HDR_LEN;
		out->stmt_len = first_len;
		break;
	case PF_PROTO_FE_EXECUTE:
		out->portal = (const char *)msg + PF_PROTO_HDR_LEN;
		out->portal_len = first_len;
		break;
	case PF_PROTO_FE_BIND:
		out->portal = (const char *)msg + PF_PROTO_HDR_LEN;
		out->portal_len = first_len;
		out->stmt = out->portal + first_len + 1;
		out->stmt_len = second_len;
		break;
	default:
		if (kind == 'S') {
			out->stmt = (const char *)msg + PF_PROTO_HDR_LEN + 1;
			out->stmt_len = first_len;
		} else {
			out->portal = (const char *)msg + PF_PROTO_HDR_LEN + 1;
			out->portal_len = first_len;
		}
		break;
	}
	return 1;
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Appends s (len bytes) and its NUL at prefix[*at], if it fits in cap. */
static bool put_name(uint8_t *prefix, size_t cap, size_t *at, const char *s, size_t len)
{
	if (len >= cap - *at) /* len + 1 > cap - *at, without overflow */
		return false;
	memcpy(prefix + *at, s, len);
	prefix[*at + len] = 0;
	*at += len + 1;
	return true;
}

int pf_proto_rename(const pf_proto_names_t *n, const char *portal, const char *stmt,
                    uint8_t *prefix, size_t cap, pf_proto_renamed_t *out)
{
	const char *names[2];
	size_t lens[2], at = 0, count = 0;
	uint64_t new_total;

	if ((portal && !n->portal) || (stmt && !n->stmt))
		return -EINVAL;
	/* In wire order: the portal comes before the statement in a Bind. */
	if (n->portal) {
		names[count] = portal ? portal : n->portal;
		lens[count++] = portal ? strnlen(portal, cap) : n->portal_len;
	}
	if (n->stmt) {
		names[count] = stmt ? stmt : n->stmt;
		lens[count++] = stmt ? strnlen(stmt, cap) : n->stmt_len;
	}
	if (cap < PF_PROTO_HDR_LEN + (n->kind ? 1u : 0u))
		return -ENOSPC;
	prefix[at++] = n->type;
	at += 4; /* the length, once known */
	if (n->kind)
		prefix[at++] = n->kind;
	for (size_t i = 0; i < count; i++)
		if (!put_name(prefix, cap, &at, names[i], lens[i]))
			return -ENOSPC;
	/* at <= cap and the tail is < 2^31: no overflow in 64 bits. */
	new_total = (uint64_t)at + (n->total - n->end);
	if (new_total - 1 > PF_PROTO_MAX_MSG_LEN)
		return -EMSGSIZE;
	put_be32(prefix + 1, (uint32_t)(new_total - 1));
	out->prefix_len = at;
	out->tail_off = n->end;
	out->total = (uint32_t)new_total;
	return 0;
}
