/*
 * vars: the session parameters pgfunnel keeps equal between a client and whatever server it
 * gets (PgBouncer's "varcache"): client_encoding, DateStyle, TimeZone,
 * standard_conforming_strings and application_name, plus the parameters listed in
 * track_extra_parameters (default IntervalStyle), configured once at start-up with
 * pf_vars_configure().
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
	PF_VAR_BUILTIN_COUNT,
	/* Slots PF_VAR_EXTRA .. PF_VAR_EXTRA + pf_var_extra_count() - 1: track_extra_parameters. */
	PF_VAR_EXTRA = PF_VAR_BUILTIN_COUNT,
	PF_VAR_COUNT = PF_VAR_EXTRA + 32
} pf_var_id_t;

/* Bounds of track_extra_parameters: entries, and a name's length (Postgres' NAMEDATALEN - 1). */
#define PF_VAR_EXTRA_MAX (PF_VAR_COUNT - PF_VAR_EXTRA)
#define PF_VAR_NAME_MAX  63
/* Longest "-c name=value" argument accepted in the startup packet's options. */
#define PF_VAR_OPTION_MAX 1024

/*
 * A set of tracked values; NULL = unknown / not set. Values are interned: every equal string
 * set anywhere is one shared, reference-counted copy (a client's "UTF8", "ISO, MDY"... cost it
 * a pointer, not a string of its own), so two values are equal exactly when their pointers
 * are. A single extra parameter (the default) is held in place; several get an array at the
 * first extra value set. Read values with pf_vars_get(); change them only with
 * pf_vars_set/copy/clear. The intern table is process-wide and not locked: vars are used from the
 * event loop's thread only.
 */
typedef struct pf_vars {
	const char *v[PF_VAR_BUILTIN_COUNT];
	/* With one extra parameter tracked (the default: IntervalStyle), its value itself: no
	 * allocation per connection for it. With more, pf_var_extra_count() slots allocated at the
	 * first extra value set (NULL until then). */
	union {
		const char *one;
		const char **many;
	} extra;
} pf_vars_t;

/* The value of an extra parameter's id in vars, or NULL (use pf_vars_get). */
const char *pf_vars_get_extra(const pf_vars_t *vars, pf_var_id_t id);

/* The value of id in vars, or NULL. */
static inline const char *pf_vars_get(const pf_vars_t *vars, pf_var_id_t id)
{
	if ((int)id < PF_VAR_BUILTIN_COUNT)
		return vars->v[id];
	return pf_vars_get_extra(vars, id);
}

/* How many distinct values are interned now (for tests). */
size_t pf_vars_interned(void);

/* Any other string many connections hold the same copy of (a client's user and database
 * names): s's shared copy with one more reference (NULL when out of memory), and back. */
const char *pf_vars_intern(const char *s);
void pf_vars_release(const char *s);

/*
 * Sets the extra tracked parameters from track_extra_parameters (a comma-separated list;
 * NULL or "" for none). Names are compared case-insensitively, as Postgres does; built-in
 * ones and repeats are skipped. A name must look like a GUC name (letters, digits, '_', '.',
 * not starting with a digit or '.', at most PF_VAR_NAME_MAX bytes), since it is written into
 * the sync query; "options", "user" and "database" are refused, as are more than
 * PF_VAR_EXTRA_MAX names. Returns 0, or -EINVAL with the reason in err (nothing changed).
 * Called once before any connection exists (the parameter needs a restart).
 */
PF_MUSTCHECK int pf_vars_configure(const char *list, char *err, size_t errlen);

/* How many extra parameters are tracked. */
int pf_var_extra_count(void);

/* The parameter's name ("DateStyle" as Postgres reports it; an extra one as configured), or
 * NULL for an extra slot that is not configured. */
const char *pf_var_name(pf_var_id_t id);

/* The tracked variable called name (case-insensitive), or -1. */
int pf_var_lookup(const char *name);

/*
 * Walks the startup packet's "options" value the way PgBouncer 1.25 accepts it: only
 * "-c name=value" and "--name=value" arguments (blanks between arguments and after -c
 * optional; a backslash escapes the next byte, e.g. a blank in the value). Calls
 * fn(arg, name, value) for each; fn returns false to stop. Returns 0 when all were walked, 1
 * when fn stopped it, -EINVAL when an argument is not of those forms (or its name is empty),
 * -E2BIG when one is longer than PF_VAR_OPTION_MAX.
 */
int pf_vars_parse_options(const char *options,
                          bool (*fn)(void *arg, const char *name, const char *value), void *arg);

/* Sets one value (interned: equal values share one copy; NULL clears). Returns 0 or -ENOMEM. */
PF_MUSTCHECK int pf_vars_set(pf_vars_t *vars, pf_var_id_t id, const char *value);

/* Copies every value of src into dst. Returns 0 or -ENOMEM. */
PF_MUSTCHECK int pf_vars_copy(pf_vars_t *dst, const pf_vars_t *src);

/* Frees every value. */
void pf_vars_clear(pf_vars_t *vars);

/*
 * Appends to sql the statements that make a server holding `server` values match `wanted`:
 * "SET DateStyle='ISO, MDY';SET TimeZone='UTC';" for each value wanted (non-NULL) that differs.
 * An extra parameter is set only when the server's value is known (it reports it), as in
 * PgBouncer: a server that does not report one would otherwise get a SET on every attach that
 * also undoes the client's own SET of it.
 * Literals are quoted for the server's standard_conforming_strings setting (E'' when it is off).
 * Returns the number of SET statements appended (0 = nothing to do).
 */
int pf_vars_build_set(const pf_vars_t *wanted, const pf_vars_t *server, pf_buf_t *sql);

#endif
