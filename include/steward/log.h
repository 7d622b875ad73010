/* JSON-lines logging on a stream (stderr by default).
 *
 * A logger is part of the application context and passed down; there is no global
 * logger. Each line is assembled in a fixed buffer and written with one fwrite, so
 * lines from different threads do not interleave. Never pass secrets or tokens. */
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
