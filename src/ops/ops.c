/* The readiness check: which schema version the database is at. */
#include "steward/ops.h"

#include <stdbool.h>

#include "steward/err.h"
#include "steward/migrate.h"
#include "steward/pool.h"
#include "steward/sql.h"

static const struct db_stmt st_schema = {
    "ops_schema", "SELECT coalesce(max(version), 0), pg_is_in_recovery() FROM schema_migrations",
    0};

struct schema_read {
    long long version;
    bool read_only;
};

static int read_schema(struct pool_conn *c, void *arg)
{
    struct schema_read *out = arg;
    PGresult *r = pool_exec(c, &st_schema, NULL);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK) {
        out->version = sql_ll(r, 0, 0);
        out->read_only = PQgetvalue(r, 0, 1)[0] == 't';
        if (out->read_only)
            pool_discard(c); /* a standby: the next checkout looks for the primary again */
    }
    PQclear(r);
    return rc;
}

int ops_schema_version(struct ops_ctx *o, long long *version, bool *read_only)
{
    struct schema_read sr = {-1, false};
    int rc = pool_with(o->pool, read_schema, &sr);
    *version = sr.version;
    *read_only = sr.read_only;
    return rc;
}

int ops_schema_expected(void)
{
    return migrate_latest();
}
