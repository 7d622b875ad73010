/* Schema migrations compiled into the binary from migrations/NNNN_name.sql. */
#ifndef STEWARD_MIGRATE_H
#define STEWARD_MIGRATE_H

#include <stddef.h>

#include "steward/log.h"

struct migration {
    int version;
    const char *name;
    const char *sql;
};

extern const struct migration migrate_embedded[];
extern const int migrate_embedded_count;

/* The schema version this binary expects (highest embedded migration). */
int migrate_latest(void);

/* Applies pending migrations over a dedicated connection, under a transaction-scoped
 * advisory lock so concurrent starters apply each migration once. Fails (returns -1
 * with a message in err) when an applied migration's checksum differs from the
 * embedded one, or the database has versions this binary does not know, and
 * MIGRATE_ECONNECT when it cannot connect. */
#define MIGRATE_ECONNECT (-2) /* the database could not be reached: worth retrying */
int migrate_run(const char *conninfo, const struct logger *lg, char *err, size_t errlen);

#endif
