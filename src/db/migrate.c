#include "steward/migrate.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "steward/crypto.h"
#include "steward/pool.h"

/* Arbitrary constant naming steward's migration lock. */
#define MIGRATE_LOCK_KEY "7203381155550001"

int migrate_latest(void)
{
    int v = 0;
    for (int i = 0; i < migrate_embedded_count; i++)
        if (migrate_embedded[i].version > v)
            v = migrate_embedded[i].version;
    return v;
}

static int fail_pg(PGconn *pg, PGresult *r, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: %s", what, r ? PQresultErrorMessage(r) : PQerrorMessage(pg));
    err[strcspn(err, "\n")] = '\0';
    return -1;
}

static int exec_ok(PGconn *pg, const char *sql, int n, const char *const *params, PGresult **out)
{
    PGresult *r = PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType s = PQresultStatus(r);
    *out = r;
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK ? 0 : -1;
}

static const struct migration *find_embedded(int version)
{
    for (int i = 0; i < migrate_embedded_count; i++)
        if (migrate_embedded[i].version == version)
            return &migrate_embedded[i];
    return NULL;
}

/* Checks what the database has against the binary. Returns the highest applied
 * version, or -1 with err set. */
static int check_applied(PGconn *pg, char *err, size_t errlen)
{
    PGresult *r = NULL;
    if (exec_ok(pg, "SELECT version, name, checksum FROM schema_migrations ORDER BY version", 0,
                NULL, &r) != 0) {
        int rc = fail_pg(pg, r, "reading schema_migrations", err, errlen);
        PQclear(r);
        return rc;
    }
    int highest = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        int v = atoi(PQgetvalue(r, i, 0));
        const struct migration *m = find_embedded(v);
        if (!m) {
            snprintf(err, errlen,
                     "database schema is newer than this binary: migration %d (%s) is applied "
                     "but this steward only knows up to %d; run a newer steward",
                     v, PQgetvalue(r, i, 1), migrate_latest());
            PQclear(r);
            return -1;
        }
        char sum[65];
        crypto_sha256_hex(m->sql, strlen(m->sql), sum);
        if (strcmp(sum, PQgetvalue(r, i, 2)) != 0) {
            snprintf(err, errlen,
                     "migration %s was edited after it was applied (checksum %.12s in the "
                     "database, %.12s in this binary); applied migrations must never change",
                     m->name, PQgetvalue(r, i, 2), sum);
            PQclear(r);
            return -1;
        }
        highest = v > highest ? v : highest;
    }
    PQclear(r);
    return highest;
}

static int apply_one(PGconn *pg, const struct migration *m, const struct logger *lg, char *err,
                     size_t errlen)
{
    PGresult *r = PQexec(pg, m->sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        char what[128];
        snprintf(what, sizeof(what), "applying migration %s", m->name);
        int rc = fail_pg(pg, r, what, err, errlen);
        PQclear(r);
        return rc;
    }
    PQclear(r);
    char ver[16], sum[65];
    snprintf(ver, sizeof(ver), "%d", m->version);
    crypto_sha256_hex(m->sql, strlen(m->sql), sum);
    const char *params[] = {ver, m->name, sum};
    if (exec_ok(pg, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                3, params, &r) != 0) {
        int rc = fail_pg(pg, r, "recording migration", err, errlen);
        PQclear(r);
        return rc;
    }
    PQclear(r);
    log_msg(lg, LOG_INFO, "migration applied", "migration", m->name, NULL);
    return 0;
}

static int run_locked(PGconn *pg, const struct logger *lg, char *err, size_t errlen)
{
    PGresult *r = NULL;
    if (exec_ok(pg, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")", 0, NULL, &r) != 0) {
        int rc = fail_pg(pg, r, "taking the migration lock", err, errlen);
        PQclear(r);
        return rc;
    }
    PQclear(r);
    if (exec_ok(pg, "SELECT to_regclass('schema_migrations') IS NOT NULL", 0, NULL, &r) != 0) {
        int rc = fail_pg(pg, r, "inspecting the schema", err, errlen);
        PQclear(r);
        return rc;
    }
    int have_table = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    int highest = have_table ? check_applied(pg, err, errlen) : 0;
    if (highest < 0)
        return -1;
    for (int i = 0; i < migrate_embedded_count; i++) {
        const struct migration *m = &migrate_embedded[i];
        if (m->version > highest && apply_one(pg, m, lg, err, errlen) != 0)
            return -1;
    }
    return 0;
}

int migrate_run(const char *conninfo, const struct logger *lg, char *err, size_t errlen)
{
    PGconn *pg = pool_connect(conninfo, "steward-migrate", 10, lg);
    if (!pg || PQstatus(pg) != CONNECTION_OK) {
        fail_pg(pg, NULL, "connecting to the database", err, errlen);
        PQfinish(pg);
        return MIGRATE_ECONNECT;
    }
    /* transaction-local, so nothing stays behind on a pooler's server connection */
    PGresult *r = PQexec(pg, "BEGIN");
    PQclear(r);
    r = PQexec(pg, "SET LOCAL client_min_messages = warning");
    PQclear(r);
    int rc = run_locked(pg, lg, err, errlen);
    r = PQexec(pg, rc == 0 ? "COMMIT" : "ROLLBACK");
    if (rc == 0 && PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = fail_pg(pg, r, "committing migrations", err, errlen);
    PQclear(r);
    PQfinish(pg);
    return rc;
}
