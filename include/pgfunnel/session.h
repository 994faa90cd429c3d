/*
 * session: carries out the pool's decisions on real clients and servers — the pf_pool_ops_t
 * that the worker registers. The pool decides who gets which server; this module makes the link
 * (conn peers, parameter sync, resuming the client) and routes the server side's news about its
 * client (resume, close) to the client layer.
 */
#ifndef PGFUNNEL_SESSION_H
#define PGFUNNEL_SESSION_H

#include "pgfunnel/pool.h"

/* How deep a link resumes newly linked clients inline before deferring to the loop. */
#define PF_SESSION_LINK_DEPTH_MAX 16

extern const pf_pool_ops_t pf_session_pool_ops;

#endif
