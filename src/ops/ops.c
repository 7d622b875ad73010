/* The readiness check: which schema version the database is at. */
#include "steward/ops.h"

#include "steward/err.h"
#include "steward/migrate.h"
#include "steward/pool.h"
#include "steward/sql.h"

static const struct db_stmt st_schema = {
    "ops_schema", "SELECT coalesce(max(version), 0) FROM schema_migrations", 0};

static int read_schema(struct pool_conn *c, void *arg)
{
    PGresult *r = pool_exec(c, &st_schema, NULL);
    int rc = pool_result_err(c, r);
    if (rc == ST_OK)
        *(long long *)arg = sql_ll(r, 0, 0);
    PQclear(r);
    return rc;
}

int ops_schema_version(struct ops_ctx *o, long long *version)
{
    *version = -1;
    return pool_with(o->pool, read_schema, version);
}

int ops_schema_expected(void)
{
    return migrate_latest();
}
