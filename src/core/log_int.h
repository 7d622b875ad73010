/* The logger's private parts, exposed to its unit test. */
#ifndef STEWARD_LOG_INT_H
#define STEWARD_LOG_INT_H

/* val in decimal, as "%lld" writes it, into out (24 bytes); returns out. */
char *log_fmt_int(char *out, long long val);

#endif
