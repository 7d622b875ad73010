/* JSON helpers on top of jansson: parsing with positions, schema checks that collect
 * every offending field, and RFC 3339 time conversion.
 *
 * Validation functions append {"field", "message"} objects to an errors array owned by
 * the caller and never stop at the first problem, so a 422 can list them all. */
#ifndef STEWARD_JSON_H
#define STEWARD_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses a request body. Rejects duplicate keys, NUL bytes, invalid UTF-8 and
 * nesting deeper than jansson's limit. On failure returns NULL and writes
 * "<reason> at line L, column C" into err. The result is owned by the caller. */
json_t *jv_parse(const char *buf, size_t len, char *err, size_t errlen);

/* Appends {"field": field, "message": printf(fmt, ...)} to errs. */
void jv_error(json_t *errs, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes prefix + "." + key (or just key when prefix is empty) into buf. */
const char *jv_path(char *buf, size_t cap, const char *prefix, const char *key);

/* Adds "unknown field" for every key of obj not in the NULL-terminated allowed list. */
void jv_unknown_fields(const json_t *obj, const char *const *allowed, const char *prefix,
                       json_t *errs);

/* Field readers. Each returns 1 when the field is present and valid (out is set),
 * 0 when absent or JSON null (an error is added only when required), -1 when invalid
 * (an error naming the field is added). Borrowed strings live as long as obj. */
int jv_string(const json_t *obj, const char *key, const char *prefix, bool required,
              size_t min_chars, size_t max_chars, const char **out, json_t *errs);
int jv_slug(const json_t *obj, const char *key, const char *prefix, bool required,
            const char **out, json_t *errs);
int jv_int(const json_t *obj, const char *key, const char *prefix, bool required, long long min,
           long long max, long long *out, json_t *errs);
int jv_number(const json_t *obj, const char *key, const char *prefix, bool required,
              double *out, json_t *errs);
int jv_bool(const json_t *obj, const char *key, const char *prefix, bool required, bool *out,
            json_t *errs);
int jv_object(const json_t *obj, const char *key, const char *prefix, bool required,
              json_t **out, json_t *errs);
int jv_time(const json_t *obj, const char *key, const char *prefix, bool required, int64_t *us,
            json_t *errs);

/* True when s matches ^[a-z0-9_]{1,64}$. */
bool jv_is_slug(const char *s);
/* True when s is 1..max characters, all printable (no control characters). */
bool jv_is_printable_id(const char *s, size_t max_chars);

/* The compact JSON text of v (any value, not only objects and arrays), as steward
 * writes every JSON it sends or stores: no spaces, object keys in the order they were
 * set (the order a client sent them, for a parsed body), strings escaped as jsonw does,
 * integers as they are and reals in the shortest form that reads back to the same
 * double (0.975, never 0.97499999999999998; a real with an integral value keeps ".0").
 * Returns a malloc'd NUL-terminated string (its length in *len when len is not NULL),
 * or NULL when out of memory or v holds a real that is not finite. */
char *json_text(const json_t *v, size_t *len);

/* RFC 3339 date-time to microseconds since the epoch. Returns 0 or -1. */
int jtime_parse(const char *s, int64_t *us);
/* Microseconds since the epoch to "YYYY-MM-DDTHH:MM:SSZ", with ".ffffff" only when the
 * fraction is not zero. out must hold 32 bytes. */
void jtime_format(int64_t us, char *out);
/* Seconds since the epoch to "YYYY-MM-DDTHH:MM:SS" (UTC, no zone) into out (32 bytes),
 * the year as printf's "%04d" writes it; returns the length (19 for years 0..9999). */
size_t jtime_format_secs(int64_t secs, char *out);
/* A JSON string of jtime_format(us); new reference. */
json_t *jtime_json(int64_t us);
/* Current wall-clock time in microseconds since the epoch (clock_wall_us). */
int64_t jtime_now_us(void);

#endif
