#include "steward/sql.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/json.h"

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
