/*
 * proto: the PostgreSQL frontend/backend protocol 3.0 codec. Parses startup packets, message
 * headers arriving in arbitrary fragments and the few server messages the pooler reads;
 * builds the messages pgfunnel sends on either side into a pf_buf_t.
 *
 * Pure code: no I/O, no allocation except through pf_buf_t, no logging. Parsers never copy:
 * the strings they return point INTO the caller's input, which must stay alive (and unchanged)
 * as long as the results are used. Every parser is bounds-checked against its `len` and returns
 * a negative errno on malformed input; what a caller tells the peer is the caller's business.
 *
 * Reference: PostgreSQL docs, "Message Formats" and "Message Flow" (protocol version 3.0).
 */
#ifndef PGFUNNEL_PROTO_H
#define PGFUNNEL_PROTO_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/buf.h"
#include "pgfunnel/util.h"

/* Protocol version codes: major in the high 16 bits, minor in the low 16 bits. */
#define PF_PROTO_VERSION(major, minor) (((uint32_t)(major) << 16) | (uint32_t)(minor))
#define PF_PROTO_VERSION_3_0           196608u   /* 3.0 */
#define PF_PROTO_CANCEL_REQUEST_CODE   80877102u /* 1234.5678 */
#define PF_PROTO_SSL_REQUEST_CODE      80877103u /* 1234.5679 */
#define PF_PROTO_GSSENC_REQUEST_CODE   80877104u /* 1234.5680 */

/* Postgres' MAX_STARTUP_PACKET_LENGTH: the longest startup packet, length field included. */
#define PF_PROTO_STARTUP_MAX 10000
/* Most parameters a startup packet may carry here (real drivers send about ten). */
#define PF_PROTO_STARTUP_MAX_PARAMS 64
/* Size of a regular message header: type byte + Int32 length. */
#define PF_PROTO_HDR_LEN 5

/* Frontend (client -> server) message types. 'p' is shared by four messages, told by context. */
#define PF_PROTO_FE_BIND                  'B'
#define PF_PROTO_FE_CLOSE                 'C'
#define PF_PROTO_FE_COPY_DATA             'd'
#define PF_PROTO_FE_COPY_DONE             'c'
#define PF_PROTO_FE_COPY_FAIL             'f'
#define PF_PROTO_FE_DESCRIBE              'D'
#define PF_PROTO_FE_EXECUTE               'E'
#define PF_PROTO_FE_FLUSH                 'H'
#define PF_PROTO_FE_FUNCTION_CALL         'F'
#define PF_PROTO_FE_GSS_RESPONSE          'p'
#define PF_PROTO_FE_PARSE                 'P'
#define PF_PROTO_FE_PASSWORD_MESSAGE      'p'
#define PF_PROTO_FE_QUERY                 'Q'
#define PF_PROTO_FE_SASL_INITIAL_RESPONSE 'p'
#define PF_PROTO_FE_SASL_RESPONSE         'p'
#define PF_PROTO_FE_SYNC                  'S'
#define PF_PROTO_FE_TERMINATE             'X'

/* Backend (server -> client) message types. */
#define PF_PROTO_BE_AUTHENTICATION             'R'
#define PF_PROTO_BE_BACKEND_KEY_DATA           'K'
#define PF_PROTO_BE_BIND_COMPLETE              '2'
#define PF_PROTO_BE_CLOSE_COMPLETE             '3'
#define PF_PROTO_BE_COMMAND_COMPLETE           'C'
#define PF_PROTO_BE_COPY_DATA                  'd'
#define PF_PROTO_BE_COPY_DONE                  'c'
#define PF_PROTO_BE_COPY_IN_RESPONSE           'G'
#define PF_PROTO_BE_COPY_OUT_RESPONSE          'H'
#define PF_PROTO_BE_COPY_BOTH_RESPONSE         'W'
#define PF_PROTO_BE_DATA_ROW                   'D'
#define PF_PROTO_BE_EMPTY_QUERY_RESPONSE       'I'
#define PF_PROTO_BE_ERROR_RESPONSE             'E'
#define PF_PROTO_BE_FUNCTION_CALL_RESPONSE     'V'
#define PF_PROTO_BE_NEGOTIATE_PROTOCOL_VERSION 'v'
#define PF_PROTO_BE_NO_DATA                    'n'
#define PF_PROTO_BE_NOTICE_RESPONSE            'N'
#define PF_PROTO_BE_NOTIFICATION_RESPONSE      'A'
#define PF_PROTO_BE_PARAMETER_DESCRIPTION      't'
#define PF_PROTO_BE_PARAMETER_STATUS           'S'
#define PF_PROTO_BE_PARSE_COMPLETE             '1'
#define PF_PROTO_BE_PORTAL_SUSPENDED           's'
#define PF_PROTO_BE_READY_FOR_QUERY            'Z'
#define PF_PROTO_BE_ROW_DESCRIPTION            'T'

/* Authentication request subtypes (the Int32 after the 'R' header). */
#define PF_PROTO_AUTH_OK             0
#define PF_PROTO_AUTH_KERBEROS_V5    2
#define PF_PROTO_AUTH_CLEARTEXT      3
#define PF_PROTO_AUTH_MD5            5
#define PF_PROTO_AUTH_SCM_CREDENTIAL 6
#define PF_PROTO_AUTH_GSS            7
#define PF_PROTO_AUTH_GSS_CONTINUE   8
#define PF_PROTO_AUTH_SSPI           9
#define PF_PROTO_AUTH_SASL           10
#define PF_PROTO_AUTH_SASL_CONTINUE  11
#define PF_PROTO_AUTH_SASL_FINAL     12

/* ReadyForQuery transaction status bytes. */
#define PF_PROTO_TX_IDLE   'I'
#define PF_PROTO_TX_BLOCK  'T'
#define PF_PROTO_TX_FAILED 'E'

/* Type OIDs used by the typed-column writers (pg_type.h). */
#define PF_PROTO_OID_BOOL    16
#define PF_PROTO_OID_INT8    20
#define PF_PROTO_OID_INT4    23
#define PF_PROTO_OID_TEXT    25
#define PF_PROTO_OID_NUMERIC 1700

/* ---- Startup packet ---- */

/* What the first packet of a connection asks for. */
typedef enum pf_proto_startup_kind {
	PF_PROTO_STARTUP_NORMAL, /* StartupMessage, protocol 3.x */
	PF_PROTO_STARTUP_SSL,    /* SSLRequest */
	PF_PROTO_STARTUP_GSSENC, /* GSSENCRequest */
	PF_PROTO_STARTUP_CANCEL, /* CancelRequest */
} pf_proto_startup_kind_t;

/* One startup parameter; both strings point into the packet. */
typedef struct pf_proto_param {
	const char *name;
	const char *value;
} pf_proto_param_t;

/*
 * A parsed startup packet. For NORMAL: `major` is 3, `minor` what the client asked for (a
 * minor != 0, or any parameter for which pf_proto_is_protocol_option() is true, means the
 * caller should answer with NegotiateProtocolVersion and carry on with 3.0, as Postgres does),
 * `params` lists every (name, value) in packet order, and the shortcuts hold the last value of
 * those names (as Postgres does when a name repeats): `user` (never NULL nor empty), `database`
 * (the user when absent or empty, as Postgres does), `options` and `replication` (NULL when
 * absent). For CANCEL: `cancel_pid` and `cancel_key`. Every string points into the parsed
 * data (NUL-terminated in place), which the caller keeps alive.
 */
typedef struct pf_proto_startup {
	pf_proto_startup_kind_t kind;
	uint16_t major, minor;
	const char *user;
	const char *database;
	const char *options;
	const char *replication;
	size_t nparams;
	pf_proto_param_t params[PF_PROTO_STARTUP_MAX_PARAMS];
	uint32_t cancel_pid;
	uint32_t cancel_key;
} pf_proto_startup_t;

/*
 * Parses the first packet a client sends, from the start of `data` (len bytes received so far).
 * Returns the packet's size in bytes (> 0, <= len) when a whole valid packet is there, and fills
 * *out; 0 when more bytes are needed (a valid prefix: feed it again with more bytes); or, as soon
 * as the bytes seen prove the packet invalid:
 *   -EMSGSIZE         length field < 8 or > PF_PROTO_STARTUP_MAX, or an SSLRequest /
 *                     GSSENCRequest not exactly 8 bytes, a CancelRequest not exactly 16;
 *   -EPROTONOSUPPORT  unknown request code or protocol major version other than 3;
 *   -EBADMSG          malformed parameter list: no final NUL as last byte, a name without a
 *                     value, an empty name before the end (Postgres: "invalid startup packet
 *                     layout: expected terminator as last byte");
 *   -E2BIG            more than PF_PROTO_STARTUP_MAX_PARAMS parameters;
 *   -EINVAL           no (or an empty) "user" parameter (Postgres answers SQLSTATE 28000,
 *                     "no PostgreSQL user name specified in startup packet").
 * *out is meaningful only when the result is > 0. Bytes after the packet are not looked at.
 */
PF_MUSTCHECK int pf_proto_parse_startup(const uint8_t *data, size_t len, pf_proto_startup_t *out);

/* Value of the last parameter called exactly `name` (case-sensitive, as Postgres), or NULL. */
const char *pf_proto_startup_get(const pf_proto_startup_t *s, const char *name);

/*
 * True when `name` is a protocol extension option ("_pq_." prefix): Postgres reports those it
 * does not know in NegotiateProtocolVersion instead of treating them as settings.
 */
bool pf_proto_is_protocol_option(const char *name);

/* ---- Message headers ---- */

/*
 * Longest wire length a message header may carry, whatever max_packet_size says: the protocol's
 * length is a signed Int32, so Postgres never sends more, and it keeps `total` (len + 1) within
 * uint32_t. The config refuses a max_packet_size above it.
 */
#define PF_PROTO_MAX_MSG_LEN 0x7fffffffu

/*
 * A regular message header: type byte, wire length (counts itself, 4..PF_PROTO_MAX_MSG_LEN),
 * payload length = len - 4, and total = len + 1, the whole message with its type byte. Use
 * `total` rather than adding to `len`: the reader guarantees it cannot overflow.
 */
typedef struct pf_proto_hdr {
	uint8_t type;
	uint32_t len;
	uint32_t payload_len;
	uint32_t total;
} pf_proto_hdr_t;

/* Collects a header that arrives split across reads. Zero it (or pf_proto_hdr_reader_init). */
typedef struct pf_proto_hdr_reader {
	uint8_t bytes[PF_PROTO_HDR_LEN];
	uint8_t have;
} pf_proto_hdr_reader_t;

/* Empties the reader: the next byte fed is a type byte. */
void pf_proto_hdr_reader_init(pf_proto_hdr_reader_t *r);

/*
 * Fast path for 5 contiguous bytes: decodes the header at `data`. Returns PF_PROTO_HDR_LEN and
 * fills *out when len >= 5; 0 when len < 5 (use the reader); or
 *   -EBADMSG   type byte 0 (no message has it; it is what a startup packet sent in mid-session
 *              or a desynchronised stream looks like) or length < 4;
 *   -EMSGSIZE  length > max_packet_size (compared with the wire length, which counts itself)
 *              or > PF_PROTO_MAX_MSG_LEN, whatever max_packet_size is.
 */
PF_MUSTCHECK int pf_proto_read_header(const uint8_t *data, size_t len, uint32_t max_packet_size,
                                      pf_proto_hdr_t *out);

/*
 * Feeds stream bytes to the reader, consuming only header bytes. *consumed gets how many of
 * the `len` offered bytes were taken (0..5, never more than len). Returns 1 when *out holds a
 * complete header (the reader is then empty again and the payload starts at data + *consumed),
 * 0 when all offered bytes were taken and more are needed, or the errors of
 * pf_proto_read_header() once the 5 bytes are in (after which the stream is beyond repair;
 * pf_proto_hdr_reader_init() before any reuse). Uses the fast path when the reader is empty and
 * 5 bytes are offered.
 */
PF_MUSTCHECK int pf_proto_hdr_feed(pf_proto_hdr_reader_t *r, const uint8_t *data, size_t len,
                                   size_t *consumed, uint32_t max_packet_size, pf_proto_hdr_t *out);

/* True for the message types a client may send after startup (PF_PROTO_FE_*). */
bool pf_proto_is_fe_type(uint8_t t);

/* True for the message types a server may send (PF_PROTO_BE_*). */
bool pf_proto_is_be_type(uint8_t t);

/* ---- Backend message builders (server -> client); all append to b, failures stick in b ---- */

/*
 * ErrorResponse: fields S and V (both `severity`, e.g. "FATAL"), C (`sqlstate`, 5 chars),
 * M (`message`), then D (`detail`) and H (`hint`) when not NULL, then the terminator.
 */
void pf_proto_be_error(pf_buf_t *b, const char *severity, const char *sqlstate, const char *message,
                       const char *detail, const char *hint);

/* NoticeResponse: the same fields as pf_proto_be_error(). */
void pf_proto_be_notice(pf_buf_t *b, const char *severity, const char *sqlstate,
                        const char *message, const char *detail, const char *hint);

/* AuthenticationOk. */
void pf_proto_be_auth_ok(pf_buf_t *b);

/* AuthenticationCleartextPassword. */
void pf_proto_be_auth_cleartext(pf_buf_t *b);

/* AuthenticationMD5Password with the 4-byte salt (borrowed). */
void pf_proto_be_auth_md5(pf_buf_t *b, const uint8_t salt[4]);

/* AuthenticationSASL: the n mechanism names, each NUL-terminated, then a final NUL. */
void pf_proto_be_auth_sasl(pf_buf_t *b, const char *const *mechs, size_t n);

/* AuthenticationSASLContinue with len bytes of SASL data (borrowed). */
void pf_proto_be_auth_sasl_continue(pf_buf_t *b, const void *data, size_t len);

/* AuthenticationSASLFinal with len bytes of SASL outcome data (borrowed). */
void pf_proto_be_auth_sasl_final(pf_buf_t *b, const void *data, size_t len);

/* ParameterStatus(name, value). */
void pf_proto_be_parameter_status(pf_buf_t *b, const char *name, const char *value);

/* BackendKeyData(pid, key) (protocol 3.0: a 4-byte key). */
void pf_proto_be_backend_key_data(pf_buf_t *b, uint32_t pid, uint32_t key);

/* ReadyForQuery with transaction status 'I', 'T' or 'E' (PF_PROTO_TX_*). */
void pf_proto_be_ready_for_query(pf_buf_t *b, uint8_t status);

/*
 * RowDescription for strlen(types) columns named names[0..]. Each char of `types` is a column
 * type: 's' text (oid 25, typlen -1), 'i' int4 (23, 4), 'q' int8 (20, 8), 'N' numeric
 * (1700, -1), 'b' bool (16, 1); table oid 0, attnum 0, typmod -1, text format. An unknown
 * type char sets b->failed.
 */
void pf_proto_be_row_description(pf_buf_t *b, const char *types, const char *const *names);

/*
 * DataRow with one argument per char of `types` (as in pf_proto_be_row_description()), sent in
 * text format: 's' const char * (NULL is SQL NULL, length -1), 'i' int32_t, 'q' int64_t,
 * 'N' uint64_t (a numeric column), 'b' int (non-zero "t", zero "f"). An unknown type char sets
 * b->failed (and the remaining arguments are not read).
 */
void pf_proto_be_data_row(pf_buf_t *b, const char *types, ...);

/* pf_proto_be_data_row() taking a va_list (consumed; the caller va_ends it). */
void pf_proto_be_data_row_v(pf_buf_t *b, const char *types, va_list ap);

/* CommandComplete with the given tag (e.g. "SHOW", "SELECT 3"). */
void pf_proto_be_command_complete(pf_buf_t *b, const char *tag);

/* EmptyQueryResponse. */
void pf_proto_be_empty_query(pf_buf_t *b);

/*
 * NegotiateProtocolVersion: `version` is the full version code the connection will use
 * (PF_PROTO_VERSION_3_0, i.e. 0x00030000), followed by the n protocol options ("_pq_.*") the
 * client sent that are not recognized. Older docs call the first field the "newest minor
 * version", but Postgres has always sent its full PG_PROTOCOL_LATEST there, and libpq 18 reads
 * it as a full version: sending a bare minor (0) would make it refuse the connection.
 */
void pf_proto_be_negotiate_protocol_version(pf_buf_t *b, uint32_t version,
                                            const char *const *unrecognized, size_t n);

/* ---- Frontend message builders (client -> server) ---- */

/* StartupMessage, protocol 3.0, with the n (name, value) pairs in order and the final NUL. */
void pf_proto_fe_startup(pf_buf_t *b, const pf_proto_param_t *params, size_t n);

/* PasswordMessage carrying a cleartext password or an "md5..." hash string. */
void pf_proto_fe_password(pf_buf_t *b, const char *password);

/*
 * SASLInitialResponse: mechanism name, then the initial response of len bytes, or length -1
 * (no initial response) when data is NULL.
 */
void pf_proto_fe_sasl_initial_response(pf_buf_t *b, const char *mech, const void *data, size_t len);

/* SASLResponse carrying len bytes of SASL data. */
void pf_proto_fe_sasl_response(pf_buf_t *b, const void *data, size_t len);

/* Query (simple query protocol) with the SQL text. */
void pf_proto_fe_query(pf_buf_t *b, const char *sql);

/*
 * Runs sql once through the extended query protocol, its parameters bound as values (never
 * spliced into the text): Parse of the unnamed statement (no parameter types: the server
 * infers them), Bind of the unnamed portal with the n parameters in text format (NULL for an
 * SQL NULL) and text results, Describe of the portal (its columns come back as a
 * RowDescription, or NoData), Execute of every row, and Sync. The five message types, in order,
 * are PF_PROTO_EXT_QUERY_TYPES (for the caller's request bookkeeping).
 */
#define PF_PROTO_EXT_QUERY_TYPES "PBDES"
void pf_proto_fe_ext_query(pf_buf_t *b, const char *sql, const char *const *params, size_t n);

/* Terminate. */
void pf_proto_fe_terminate(pf_buf_t *b);

/* CancelRequest: 16 bytes without a type byte (sent on a fresh connection). */
void pf_proto_fe_cancel_request(pf_buf_t *b, uint32_t pid, uint32_t key);

/* SSLRequest: 8 bytes without a type byte. */
void pf_proto_fe_ssl_request(pf_buf_t *b);

/* ---- Readers of server message payloads (the bytes after the 5-byte header) ---- */

/*
 * Fields of an ErrorResponse or NoticeResponse; NULL where the field is absent. `severity` is
 * the non-localized V when present, else S. Strings point into the payload.
 */
typedef struct pf_proto_error {
	const char *severity;
	const char *severity_localized; /* S */
	const char *sqlstate;           /* C */
	const char *message;            /* M */
	const char *detail;             /* D */
	const char *hint;               /* H */
	const char *position;           /* P */
	const char *where;              /* W */
} pf_proto_error_t;

/*
 * Parses ErrorResponse/NoticeResponse fields: (code byte, String) pairs ended by a 0 byte that
 * must be the payload's last byte. Unknown field codes are skipped, as the protocol asks.
 * Returns 0, or -EBADMSG (a field without its NUL, or no terminator as last byte).
 */
PF_MUSTCHECK int pf_proto_parse_error_fields(const uint8_t *payload, size_t len,
                                             pf_proto_error_t *out);

/*
 * ParameterStatus payload: two Strings filling it exactly. Returns 0 with *name and *value
 * pointing into payload, or -EBADMSG.
 */
PF_MUSTCHECK int pf_proto_parse_parameter_status(const uint8_t *payload, size_t len,
                                                 const char **name, const char **value);

/* BackendKeyData payload (exactly 8 bytes in 3.0). Returns 0, or -EBADMSG. */
PF_MUSTCHECK int pf_proto_parse_backend_key_data(const uint8_t *payload, size_t len, uint32_t *pid,
                                                 uint32_t *key);

/*
 * PasswordMessage payload: one String filling it exactly (cleartext or md5 answer). Returns 0
 * with *password pointing into payload, or -EBADMSG.
 */
PF_MUSTCHECK int pf_proto_parse_password(const uint8_t *payload, size_t len, const char **password);

/*
 * SASLInitialResponse payload: the mechanism name (a String), an Int32 length and that many
 * bytes filling the rest exactly; a length of -1 means no initial response (*data NULL,
 * *data_len 0). Returns 0 with *mech and *data pointing into payload; -EBADMSG when there is
 * no NUL-terminated, non-empty name; -ENODATA when the length is missing or asks for more
 * bytes than follow (negative ones included); -EMSGSIZE when bytes follow the data. (Postgres
 * says "insufficient data left in message" and "invalid message format" for the last two.)
 */
PF_MUSTCHECK int pf_proto_parse_sasl_initial_response(const uint8_t *payload, size_t len,
                                                      const char **mech, const uint8_t **data,
                                                      size_t *data_len);

/* One column value of a DataRow: data NULL for an SQL NULL; not NUL-terminated. */
typedef struct pf_proto_col {
	const uint8_t *data;
	uint32_t len;
} pf_proto_col_t;

/*
 * DataRow payload: an Int16 column count, then per column an Int32 length (-1 for NULL) and
 * that many bytes, filling the payload exactly. Returns 0 with *ncols set and the first `max`
 * columns in cols[] (pointing into payload; cols may be NULL when max is 0), or -EBADMSG.
 */
PF_MUSTCHECK int pf_proto_parse_data_row(const uint8_t *payload, size_t len, pf_proto_col_t *cols,
                                         size_t max, uint16_t *ncols);

/*
 * RowDescription payload: an Int16 field count, then per field a name (String) and 18 bytes
 * (table OID, column number, type OID, size, modifier, format), filling it exactly. Returns 0
 * with *ncols set, or -EBADMSG.
 */
PF_MUSTCHECK int pf_proto_parse_row_description(const uint8_t *payload, size_t len,
                                                uint16_t *ncols);

/* ReadyForQuery payload: one byte 'I', 'T' or 'E'. Returns 0, or -EBADMSG. */
PF_MUSTCHECK int pf_proto_parse_ready_for_query(const uint8_t *payload, size_t len,
                                                uint8_t *status);

/* An Authentication* request: its subtype and the bytes after it (pointing into the payload). */
typedef struct pf_proto_auth {
	uint32_t subtype; /* PF_PROTO_AUTH_* */
	const uint8_t *rest;
	size_t rest_len;
} pf_proto_auth_t;

/*
 * Authentication* payload. Known subtypes are checked for their exact shape (Ok, Cleartext and
 * the other no-data requests: nothing after the subtype; MD5: a 4-byte salt; SASL: a non-empty
 * list of non-empty names, each NUL-terminated, and a final NUL as last byte); SASLContinue,
 * SASLFinal and GSSContinue carry arbitrary data. Unknown subtypes are returned as they are for
 * the caller to refuse. Returns 0, or -EBADMSG.
 */
PF_MUSTCHECK int pf_proto_parse_auth(const uint8_t *payload, size_t len, pf_proto_auth_t *out);

/*
 * True when an AuthenticationSASL request (already validated by pf_proto_parse_auth) offers
 * the mechanism `mech` (e.g. "SCRAM-SHA-256").
 */
bool pf_proto_auth_has_sasl_mech(const pf_proto_auth_t *a, const char *mech);

/* ---- Statement and portal names in extended-protocol messages (for renaming in flight) ---- */

/*
 * Where the names of a Parse, Bind, Describe, Close or Execute message are. Offsets count from
 * the message's type byte; the strings point into the caller's bytes (NUL-terminated there).
 */
typedef struct pf_proto_names {
	uint8_t type;        /* PF_PROTO_FE_PARSE, _BIND, _DESCRIBE, _CLOSE or _EXECUTE */
	uint8_t kind;        /* Describe/Close: 'S' (a statement) or 'P' (a portal); else 0 */
	uint32_t total;      /* the whole message, type byte included (its header's len + 1) */
	const char *portal;  /* Bind, Execute, Describe/Close 'P'; else NULL */
	const char *stmt;    /* Parse, Bind, Describe/Close 'S'; else NULL */
	uint32_t portal_len; /* strlen(portal), 0 when NULL */
	uint32_t stmt_len;   /* strlen(stmt), 0 when NULL */
	uint32_t end;        /* just past the last name's NUL: the untouched tail starts here */
} pf_proto_names_t;

/*
 * Finds the names at the start of a frontend message: msg points at its type byte and `avail`
 * bytes of it are at hand — fewer than the whole message when it is still arriving, or more
 * (bytes past the message are never looked at). The names come first (Bind: the portal, then
 * the statement; Describe/Close: a kind byte, then one name), so a message of any size is
 * known from its first out->end bytes. Returns 1 with *out filled (pointers into msg); 0 when
 * the names end beyond avail: hold more of the message and call again (a caller whose hold
 * buffer is full by then cannot rename it); or, as soon as the bytes seen prove it:
 *   -EINVAL   not one of the five types;
 *   -EBADMSG  a length field below 4 or above PF_PROTO_MAX_MSG_LEN, a name without its NUL
 *             inside the message, a Describe/Close kind other than 'S'/'P', or fewer bytes after
 *             the names than the message's fixed fields take (Parse 3, Bind 6, Execute exactly
 *             4, Describe/Close exactly 0): what PostgreSQL would refuse as malformed.
 */
PF_MUSTCHECK int pf_proto_read_names(const uint8_t *msg, size_t avail, pf_proto_names_t *out);

/* The new start of a renamed message (pf_proto_rename). */
typedef struct pf_proto_renamed {
	size_t prefix_len; /* bytes written to the prefix buffer */
	uint32_t tail_off; /* then send the original message from this offset (names->end) on */
	uint32_t total;    /* the new message's whole size, type byte included */
} pf_proto_renamed_t;

/*
 * Renames a message found by pf_proto_read_names() without copying its payload: `stmt` replaces
 * the statement name (Parse, Bind, Describe/Close 'S'), `portal` the portal name (Bind,
 * Execute, Describe/Close 'P'); NULL keeps a name. Writes into `prefix` (cap bytes, the
 * caller's, not overlapping the message) the type byte, the new length, the kind byte of a
 * Describe/Close and the names with their NULs (kept ones copied through n's pointers: the
 * message's first n->end bytes must still be where pf_proto_read_names() saw them). The new message
 * is the prefix followed by the original bytes [tail_off, n->total), which may still be arriving
 * and are forwarded as they are. Returns 0; -EINVAL when a name is given that the message does not
 * have; -ENOSPC when the prefix does not fit in cap; -EMSGSIZE when the new length would exceed
 * PF_PROTO_MAX_MSG_LEN. On error *out and prefix are left undefined.
 */
PF_MUSTCHECK int pf_proto_rename(const pf_proto_names_t *n, const char *portal, const char *stmt,
                                 uint8_t *prefix, size_t cap, pf_proto_renamed_t *out);

#endif
