/*
 * vars: the session parameters pgfunnel keeps equal between a client and whatever server it
 * gets (PgBouncer's "varcache"): client_encoding, DateStyle, TimeZone,
 * standard_conforming_strings, application_name and IntervalStyle.
 *
 * A client's value is what it asked for at startup or what a server reported (ParameterStatus)
 * while linked to it; a server's value is what it last reported. Before a client's messages go
 * to a server whose values differ, pgfunnel sends one SET query built here. Pure code.
 */
#ifndef PGFUNNEL_VARS_H
#define PGFUNNEL_VARS_H

#include <stdbool.h>
#include <stddef.h>

#include "pgfunnel/buf.h"
#include "pgfunnel/util.h"

typedef enum pf_var_id {
	PF_VAR_CLIENT_ENCODING = 0,
	PF_VAR_DATESTYLE,
	PF_VAR_TIMEZONE,
	PF_VAR_STANDARD_CONFORMING_STRINGS,
	PF_VAR_APPLICATION_NAME,
	PF_VAR_INTERVALSTYLE,
	PF_VAR_COUNT
} pf_var_id_t;

/* A set of tracked values; NULL = unknown / not set. Strings are owned (malloc). */
typedef struct pf_vars {
	char *v[PF_VAR_COUNT];
} pf_vars_t;

/* The parameter's name as Postgres reports it in ParameterStatus ("DateStyle"). */
const char *pf_var_name(pf_var_id_t id);

/* The tracked variable called name (case-insensitive), or -1. */
int pf_var_lookup(const char *name);

/* Sets one value (copied; NULL clears). Returns 0 or -ENOMEM. */
PF_MUSTCHECK int pf_vars_set(pf_vars_t *vars, pf_var_id_t id, const char *value);

/* Copies every value of src into dst. Returns 0 or -ENOMEM. */
PF_MUSTCHECK int pf_vars_copy(pf_vars_t *dst, const pf_vars_t *src);

/* Frees every value. */
void pf_vars_clear(pf_vars_t *vars);

/*
 * Appends to sql the statements that make a server holding `server` values match `wanted`:
 * "SET DateStyle='ISO, MDY';SET TimeZone='UTC';" for each value wanted (non-NULL) that differs.
 * Literals are quoted for the server's standard_conforming_strings setting (E'' when it is off).
 * Returns the number of SET statements appended (0 = nothing to do).
 */
int pf_vars_build_set(const pf_vars_t *wanted, const pf_vars_t *server, pf_buf_t *sql);

#endif
