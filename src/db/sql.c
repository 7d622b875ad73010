#include "steward/sql.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/err.h"
#include "steward/json.h"
#include "steward/pool.h"

long long sql_ll(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

double sql_dbl(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0.0 : strtod(PQgetvalue(r, row, col), NULL);
}

bool sql_bool(const PGresult *r, int row, int col)
{
    return !PQgetisnull(r, row, col) && PQgetvalue(r, row, col)[0] == 't';
}

bool sql_isnull(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col);
}

const char *sql_str(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

json_t *sql_json_str(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return json_null();
    return json_stringn(PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col));
}

json_t *sql_json_parse(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return json_null();
    json_t *v = json_loadb(PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col),
                           JSON_DECODE_ANY, NULL);
    return v ? v : json_null();
}

json_t *sql_json_time(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return json_null();
    return jtime_json(sql_ll(r, row, col));
}

const char *sql_fmt_ll(char *buf, long long v)
{
    snprintf(buf, 24, "%lld", v);
    return buf;
}

const char *sql_fmt_time(char *buf, int64_t us)
{
    jtime_format(us, buf);
    return buf;
}

int sql_page(struct pool *p, const struct db_stmt *st, const char **params, long long before_id,
             int limit, json_t *(*row)(const PGresult *r, int i), json_t **items,
             long long *next_before)
{
    *items = NULL;
    *next_before = 0;
    char before[24], lim[24];
    params[0] = sql_fmt_ll(before, before_id > 0 ? before_id : INT64_MAX);
    params[1] = sql_fmt_ll(lim, (long long)limit + 1);
    struct pool_conn *c;
    int rc = pool_acquire(p, &c);
    if (rc != ST_OK)
        return rc;
    PGresult *r = pool_exec(c, st, params);
    rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        json_t *arr = json_array();
        int n = PQntuples(r);
        for (int i = 0; arr && i < n && i < limit; i++)
            json_array_append_new(arr, row(r, i));
        if (!arr) {
            rc = ST_ENOMEM;
        } else {
            if (n > limit)
                *next_before = sql_ll(r, limit - 1, 0);
            *items = arr;
        }
    }
    PQclear(r);
    pool_release(p, c);
    return rc;
}
