/* JSON-lines logging on a stream (stderr by default).
 *
 * A logger is part of the application context and passed down; there is no global
 * logger. Each line is assembled in a fixed buffer and written with one fwrite, so
 * lines from different threads do not interleave. Never pass secrets or tokens.
 *
 * The one piece of per-thread state is the log scope: a transport sets it on the thread
 * that runs a request's handler for exactly the duration of that handler (and restores
 * the previous one after), and every line written on that thread meanwhile, by any
 * layer, carries the scope's trace_id. Work a handler hands to another thread does not
 * inherit it: that thread sets its own scope if it has one (scouts' device_hello job). */
#ifndef STEWARD_LOG_H
#define STEWARD_LOG_H

#include <stdio.h>
#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

struct logger {
    enum log_level level;
    FILE *out;
};

#define LOG_LINE_MAX 4096

struct log_line {
    const struct logger *lg;
    int enabled;
    size_t len;
    char buf[LOG_LINE_MAX];
};

#define LOG_TRACE_ID_LEN 32

/* The request context a line is written in. trace_id empty: none. */
struct log_scope {
    char trace_id[LOG_TRACE_ID_LEN + 1];
};

/* Makes scope (NULL: none) the calling thread's log scope; returns the previous one,
 * which the caller restores when it is done. scope must outlive its time as the scope. */
const struct log_scope *log_scope_set(const struct log_scope *scope);

/* Parses a W3C Trace Context `traceparent` value ("00-<32 hex>-<16 hex>-<2 hex>"; a
 * later version may append "-..." after those 55 characters): 0 with the trace id in
 * trace_id (LOG_TRACE_ID_LEN + 1 bytes) and "00-trace-parent-flags" in canon (56 bytes),
 * or -1 when it is malformed, all-zero or version ff (and then the value is ignored). */
int log_traceparent_parse(const char *value, char *trace_id, char *canon);

/* Parses "debug", "info", "warn"/"warning", "error". Returns 0 or -1. */
int log_level_parse(const char *s, enum log_level *out);

/* Starts a line with ts, level and msg. If the level is filtered out, the other
 * calls do nothing. */
void log_begin(struct log_line *l, const struct logger *lg, enum log_level lvl, const char *msg);
void log_str(struct log_line *l, const char *key, const char *val);
void log_int(struct log_line *l, const char *key, long long val);
void log_dbl(struct log_line *l, const char *key, double val);
/* Closes and writes the line. */
void log_end(struct log_line *l);

/* One-shot line: msg plus string pairs key, value, ..., terminated by NULL. */
void log_msg(const struct logger *lg, enum log_level lvl, const char *msg, ...);

#endif
