/* Small helpers for reading libpq text results and building parameters. */
#ifndef STEWARD_SQL_H
#define STEWARD_SQL_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

/* SQL fragment converting a timestamptz column to epoch microseconds (int8). */
#define SQL_US(col) "(extract(epoch from " col ") * 1000000)::int8"

/* Field value helpers; NULL fields read as 0 / false / NULL. */
long long sql_ll(const PGresult *r, int row, int col);
double sql_dbl(const PGresult *r, int row, int col);
bool sql_bool(const PGresult *r, int row, int col);
bool sql_isnull(const PGresult *r, int row, int col);
/* The text value or NULL for SQL NULL (borrowed from r). */
const char *sql_str(const PGresult *r, int row, int col);
/* JSON of a text value: string or null. New reference. */
json_t *sql_json_str(const PGresult *r, int row, int col);
/* Parses a json/jsonb column; null for SQL NULL. New reference. */
json_t *sql_json_parse(const PGresult *r, int row, int col);
/* RFC 3339 string of an epoch-microseconds column (see SQL_US), null for SQL NULL. */
json_t *sql_json_time(const PGresult *r, int row, int col);

/* Formats v into buf (at least 24 bytes) and returns buf, for text parameters. */
const char *sql_fmt_ll(char *buf, long long v);
/* Formats epoch microseconds as an RFC 3339 string into buf (32 bytes). */
const char *sql_fmt_time(char *buf, int64_t us);

struct pool;
struct db_stmt;

/* One page of a keyset-paged list, newest first. st takes the id to read below as $1
 * and a row count as $2, then params[2..] (params[0] and params[1] are filled in here);
 * its first column is the row's id. On ST_OK, *items holds up to limit rows made by row,
 * and *next_before the id to pass for the next page (0: this was the last). */
int sql_page(struct pool *p, const struct db_stmt *st, const char **params, long long before_id,
             int limit, json_t *(*row)(const PGresult *r, int i), json_t **items,
             long long *next_before);

#endif
