#include "steward/config.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum kind { K_STR, K_INT, K_BOOL, K_LEVEL };

struct setting {
    const char *name;
    enum kind kind;
    size_t offset;
    const char *def; /* NULL: unset allowed (strings only) */
    long min, max;
    const char *help;
};

#define OFF(f) offsetof(struct config, f)

static const struct setting settings[] = {
    {"STEWARD_DATABASE_URL", K_STR, OFF(database_url), "", 0, 0,
     "libpq URI or conninfo string of the database; empty uses libpq's `PG*` environment "
     "defaults"},
    {"STEWARD_DATABASE_LISTEN_URL", K_STR, OFF(database_listen_url), NULL, 0, 0,
     "direct connection for LISTEN/NOTIFY, for when `STEWARD_DATABASE_URL` points at a "
     "transaction-mode pooler (required with `STEWARD_DATABASE_POOLER=transaction`); unset, "
     "the database URL is used"},
    {"STEWARD_DATABASE_POOLER", K_STR, OFF(database_pooler), "none", 0, 0,
     "`none`, or `transaction` when `STEWARD_DATABASE_URL` leads to a transaction-mode "
     "pooler (PgBouncer): no prepared statements, `statement_timeout` set in each "
     "transaction, one transaction per round trip; `STEWARD_DATABASE_LISTEN_URL` must then "
     "be set and reach PostgreSQL directly or through a session-mode pool"},
    {"STEWARD_BIND", K_STR, OFF(bind), "127.0.0.1", 0, 0,
     "address both servers listen on (`0.0.0.0` in the Docker image); must not be empty"},
    {"STEWARD_ADMIN_KEY", K_STR, OFF(admin_key), NULL, 0, 0,
     "at least 16 characters: makes sure an admin API key named `admin-env` with this "
     "secret exists; changing it replaces the old one"},
    {"STEWARD_PSEUDONYM_KEY", K_STR, OFF(pseudonym_key), NULL, 0, 0,
     "at least 16 characters: the HMAC-SHA256 key that turns an erased user's id into its "
     "pseudonym (audit rows, lessons); every instance of one database must use the same. "
     "Unset, a random key generated once per database (table `steward_secrets`) is used"},
    {"STEWARD_LOG_LEVEL", K_LEVEL, OFF(log_level), "info", 0, 0,
     "lowest level of the JSON log lines written to stderr"},
    {"STEWARD_ACCESS_LOG", K_BOOL, OFF(access_log), "true", 0, 0,
     "one JSON log line per HTTP request"},
    {"STEWARD_HTTP_PORT", K_INT, OFF(http_port), "8080", 0, 65535,
     "REST port; 0 picks a free one (the `serving` log line says which)"},
    {"STEWARD_WS_PORT", K_INT, OFF(ws_port), "8081", 0, 65535,
     "WebSocket port; must differ from `STEWARD_HTTP_PORT`"},
    {"STEWARD_DB_POOL_SIZE", K_INT, OFF(db_pool_size), "8", 1, 512,
     "connections in the one pool both layers share"},
    {"STEWARD_DB_ACQUIRE_TIMEOUT_MS", K_INT, OFF(db_acquire_timeout_ms), "2000", 1, 600000,
     "how long a caller waits for a free connection before the answer is 503 with "
     "`Retry-After`"},
    {"STEWARD_DB_STATEMENT_TIMEOUT_MS", K_INT, OFF(db_statement_timeout_ms), "5000", 1, 3600000,
     "`statement_timeout` of every pooled connection"},
    {"STEWARD_HTTP_THREADS", K_INT, OFF(http_threads), "4", 1, 256,
     "threads running the HTTP handlers that may wait on the database"},
    {"STEWARD_HTTP_LOOPS", K_INT, OFF(http_loops), "0", 0, 256,
     "HTTP event loops; 0 means one per two CPUs (at least 1); never more than "
     "`STEWARD_HTTP_THREADS`"},
    {"STEWARD_HTTP_PARK_MS", K_INT, OFF(http_park_ms), "2", 0, 1000,
     "how long a bond read or consume waits for the database before its connection is "
     "suspended; 0 suspends at once"},
    {"STEWARD_WORKER_THREADS", K_INT, OFF(worker_threads), "4", 1, 256,
     "threads of the work queue: database work of the WebSocket layer and of the timers"},
    {"STEWARD_SHUTDOWN_TIMEOUT_S", K_INT, OFF(shutdown_timeout_s), "8", 1, 300,
     "bound on finishing in-flight work once the drain is over (with the drain, inside "
     "the orchestrator's grace period: `stop_grace_period` in docker/compose.yaml)"},
    {"STEWARD_DRAIN_S", K_INT, OFF(drain_s), "5", 0, 300,
     "at SIGTERM, `/readyz` answers 503 at once while requests are still served for this "
     "long, so a load balancer stops routing here; then device sockets close with 1012; a "
     "second signal cuts the drain short"},
    {"STEWARD_LESSONS_ENABLED", K_BOOL, OFF(lessons_enabled), "true", 0, 0,
     "kill switch of the lessons journal: false makes every lessons operation a no-op"},
    {"STEWARD_LESSONS_DEDUP_WINDOW_S", K_INT, OFF(lessons_dedup_window_s), "3600", 0, 31536000,
     "dedup window of `auto` lessons; 0 turns dedup off"},
    {"STEWARD_LESSONS_RECORD_WAIT_MS", K_INT, OFF(lessons_record_wait_ms), "5", 1, 1000,
     "how long a lesson steward records itself may hold up the request that triggers it, "
     "once waiting for a connection and once for the statement; past that it is queued "
     "and retried in the background"},
    {"STEWARD_LESSONS_QUEUE_MAX", K_INT, OFF(lessons_queue_max), "1000", 1, 1000000,
     "lessons the background retry queue holds; more are dropped and counted in "
     "`lessons_queue_overflow_total`"},
    {"STEWARD_PROPOSAL_TTL_DAYS", K_INT, OFF(proposal_ttl_days), "30", 1, 3650,
     "proposals expire this long after triage"},
    {"STEWARD_ACK_TIMEOUT_S", K_INT, OFF(ack_timeout_s), "300", 1, 86400,
     "a delivered proposal not acked within this is sent again"},
    {"STEWARD_MAX_DELIVERY_ATTEMPTS", K_INT, OFF(max_delivery_attempts), "10", 1, 1000,
     "after this many deliveries an unacked proposal fails"},
    {"STEWARD_MAX_INFLIGHT", K_INT, OFF(max_inflight), "32", 1, 10000,
     "unacked proposals outstanding per device session"},
    {"STEWARD_WS_MAX_QUEUE_BYTES", K_INT, OFF(ws_max_queue_bytes), "1048576", 1024, 1073741824,
     "outbound bytes queued for a device before it is dropped (close 1008)"},
    {"STEWARD_WS_HEARTBEAT_S", K_INT, OFF(ws_heartbeat_s), "30", 1, 3600,
     "server ping interval; a peer silent for two intervals plus 5 s is dropped"},
    {"STEWARD_WS_HELLO_TIMEOUT_S", K_INT, OFF(ws_hello_timeout_s), "10", 1, 600,
     "close 4408 when no `device_hello` arrives within this"},
    {"STEWARD_WS_MAX_CONNECTIONS", K_INT, OFF(ws_max_connections), "20000", 1, 1000000,
     "device sockets per instance, sessions and handshakes in progress together (one "
     "past it is closed at accept); lowered at start-up when the open-file limit "
     "(`RLIMIT_NOFILE`) cannot hold it next to the HTTP connections (the `descriptor "
     "budget` log line gives the split)"},
    {"STEWARD_WS_MAX_HANDSHAKES", K_INT, OFF(ws_max_handshakes), "256", 0, 100000,
     "device connections accepted and not yet upgraded to a WebSocket; at it the instance "
     "stops accepting until half of them are done, and further connections wait in the "
     "kernel's accept queue (`STEWARD_WS_LISTEN_BACKLOG`), so that a reconnect storm is "
     "taken at the pace the instance can serve; 0 means no cap"},
    {"STEWARD_WS_LISTEN_BACKLOG", K_INT, OFF(ws_listen_backlog), "65535", 0, 1000000,
     "connections the kernel queues for the device port before they are accepted; Linux "
     "bounds it by `net.core.somaxconn` (4096 unless raised); 0 keeps libwebsockets' own "
     "(4096)"},
    {"STEWARD_WS_ACCEPT_RATE", K_INT, OFF(ws_accept_rate), "0", 0, 1000000,
     "device connections accepted per second at most; the others wait in the kernel's "
     "accept queue, so that a reconnect storm leaves the database room for other work "
     "(with several instances on one database, each takes its share); 0 means no limit"},
    {"STEWARD_WS_MAX_FRAMES_PER_S", K_INT, OFF(ws_max_frames_per_s), "1000", 0, 1000000,
     "frames a device session may send per second; more closes it 1008; 0 means no limit"},
    {"STEWARD_WS_MAX_FRAMES_IN_FLIGHT", K_INT, OFF(ws_max_frames_in_flight), "64", 0, 100000,
     "acks of one session submitted and not answered yet; one more closes it 1008; 0 means "
     "no cap"},
    {"STEWARD_WORKER_QUEUE_MAX", K_INT, OFF(worker_queue_max), "20000", 0, 10000000,
     "acks waiting for their statement (or jobs waiting for the workers, when an ack has "
     "to start the job that takes them) beyond which an ack is refused (close 1013); "
     "hellos and the timers' jobs are never refused, and hellos run ahead of waiting acks; "
     "0 means no bound"},
    {"STEWARD_WS_HELLO_BATCH", K_INT, OFF(ws_hello_batch), "256", 1, 10000,
     "device hellos whose tokens are checked in one statement: hellos arriving while one "
     "batch is checked wait for the next (a lone hello never waits), and their first "
     "delivery passes, as well as the catch-up after the notification listener "
     "reconnected, run as one statement per this many users; acks are taken in batches "
     "of this many as well"},
    {"STEWARD_HTTP_MAX_CONNECTIONS", K_INT, OFF(http_max_connections), "16384", 1, 1000000,
     "open REST connections; lowered at start-up when the open-file limit cannot hold it"},
    {"STEWARD_HTTP_MAX_CONNECTIONS_PER_ADDRESS", K_INT, OFF(http_max_connections_per_address),
     "256", 0, 1000000,
     "open REST connections from one client address; more are closed at once. Behind a "
     "load balancer every connection comes from its address: raise this to "
     "`STEWARD_HTTP_MAX_CONNECTIONS` or set 0 (no cap) and cap per client at the balancer"},
    {"STEWARD_HTTP_HEADER_TIMEOUT_S", K_INT, OFF(http_header_timeout_s), "10", 1, 3600,
     "a request's line and headers must arrive within this of the connection opening (or of "
     "the previous answer on a kept-alive connection, plus 30 s of idleness); else the "
     "connection is closed"},
    {"STEWARD_HEAL_INTERVAL_S", K_INT, OFF(heal_interval_s), "900", 1, 604800,
     "self-healing sweep period"},
    {"STEWARD_HEAL_OFFSET_S", K_INT, OFF(heal_offset_s), "300", 0, 604800,
     "sweeps run on the wall clock at this offset into each `STEWARD_HEAL_INTERVAL_S` "
     "period counted from the epoch (every 15 min at 5 min: :05, :20, :35, :50); taken "
     "modulo the interval"},
    {"STEWARD_PERF_INTERVAL_S", K_INT, OFF(perf_interval_s), "7200", 1, 604800,
     "performance report period"},
    {"STEWARD_PERF_OFFSET_S", K_INT, OFF(perf_offset_s), "3600", 0, 604800,
     "performance reports run at this offset into each `STEWARD_PERF_INTERVAL_S` period "
     "(every 2 h at 60 min: 01:00, 03:00, ... UTC); taken modulo the interval"},
    {"STEWARD_INSTANCE_HEARTBEAT_S", K_INT, OFF(instance_heartbeat_s), "5", 1, 300,
     "each instance records its figures in the instance registry this often; an instance "
     "silent for three periods is no longer listed as live"},
    {"STEWARD_STUCK_AFTER_S", K_INT, OFF(stuck_after_s), "1800", 1, 604800,
     "running planner actions older than this are reset to failed/timeout"},
    {"STEWARD_ARCHIVE_AFTER_DAYS", K_INT, OFF(archive_after_days), "7", 1, 3650,
     "failed planner actions older than this are archived; job heartbeats of instances "
     "silent this long are pruned"},
    {"STEWARD_DEGRADED_DB_LATENCY_MS", K_INT, OFF(degraded_db_latency_ms), "250", 1, 600000,
     "a sweep measuring a slower database round trip reports degraded"},
    {"STEWARD_DEGRADED_POOL_WAITING", K_INT, OFF(degraded_pool_waiting), "4", 1, 100000,
     "callers waiting for a connection at which a sweep reports degraded"},
    {"STEWARD_PERF_POOL_WAIT_P95_MS", K_INT, OFF(perf_pool_wait_p95_ms), "50", 1, 600000,
     "pool wait p95 above which the performance report recommends a larger pool"},
    {"STEWARD_PERF_ERROR_RATE_PCT", K_INT, OFF(perf_error_rate_pct), "5", 1, 100,
     "5xx rate of a route above which the performance report names the route"},
    {"STEWARD_PERF_ROUTE_P99_MS", K_INT, OFF(perf_route_p99_ms), "250", 1, 600000,
     "p99 latency of a route above which the performance report names the route"},
    {"STEWARD_AUTH_CACHE_REFRESH_MS", K_INT, OFF(auth_cache_refresh_ms), "2000", 100, 600000,
     "API key cache refresh period: a revocation reaches every instance within it"},
    {"STEWARD_DECK", K_BOOL, OFF(deck), "true", 0, 0,
     "serve the Observation Deck, the admin console, under `/deck/`; false answers 404 there"},
    {"STEWARD_DECK_DIR", K_STR, OFF(deck_dir), NULL, 0, 0,
     "serve the console's files from this folder (for development) instead of the copies "
     "compiled into the binary"},
    {"STEWARD_DECK_SECURE_COOKIE", K_BOOL, OFF(deck_secure_cookie), "false", 0, 0,
     "mark the console's session cookie `Secure` (set it when a TLS proxy fronts steward)"},
    {"STEWARD_DECK_SESSION_TTL_S", K_INT, OFF(deck_session_ttl_s), "43200", 60, 2592000,
     "lifetime of a console session from sign-in"},
};

static const char *env_get(const char *name, void *arg)
{
    (void)arg;
    return getenv(name);
}

static int parse_int(const char *s, long min, long max, int *out)
{
    if (!*s)
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

static int apply(struct config *cfg, const struct setting *st, const char *val, char *err,
                 size_t errlen)
{
    char *field = (char *)cfg + st->offset;
    switch (st->kind) {
    case K_STR: {
        char *copy = strdup(val);
        if (!copy) {
            snprintf(err, errlen, "%s: out of memory", st->name);
            return -1;
        }
        *(char **)field = copy;
        return 0;
    }
    case K_INT:
        if (parse_int(val, st->min, st->max, (int *)field) == 0)
            return 0;
        snprintf(err, errlen, "%s: expected an integer from %ld to %ld, got '%.64s'", st->name,
                 st->min, st->max, val);
        return -1;
    case K_BOOL:
        if (parse_bool(val, (bool *)field) == 0)
            return 0;
        snprintf(err, errlen, "%s: expected true or false, got '%.64s'", st->name, val);
        return -1;
    case K_LEVEL:
        if (log_level_parse(val, (enum log_level *)field) == 0)
            return 0;
        snprintf(err, errlen, "%s: expected debug, info, warn or error, got '%.64s'", st->name,
                 val);
        return -1;
    }
    return -1;
}

int config_load(struct config *cfg, config_getenv_fn get, void *arg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    if (!get)
        get = env_get;
    for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
        const struct setting *st = &settings[i];
        const char *val = get(st->name, arg);
        if (!val)
            val = st->def;
        if (!val)
            continue;
        if (apply(cfg, st, val, err, errlen) != 0)
            goto fail;
    }
    if (strcmp(cfg->database_pooler, "transaction") == 0) {
        cfg->database_pooler_txn = true;
        if (!cfg->database_listen_url) {
            snprintf(err, errlen,
                     "STEWARD_DATABASE_LISTEN_URL: must be set with STEWARD_DATABASE_POOLER="
                     "transaction (LISTEN needs a session: a direct connection or a "
                     "session-mode pool)");
            goto fail;
        }
    } else if (strcmp(cfg->database_pooler, "none") != 0) {
        snprintf(err, errlen, "STEWARD_DATABASE_POOLER: expected none or transaction, got '%.64s'",
                 cfg->database_pooler);
        goto fail;
    }
    if (!cfg->database_listen_url) {
        cfg->database_listen_url = strdup(cfg->database_url);
        if (!cfg->database_listen_url) {
            snprintf(err, errlen, "STEWARD_DATABASE_LISTEN_URL: out of memory");
            goto fail;
        }
    }
    if (cfg->admin_key && strlen(cfg->admin_key) < 16) {
        snprintf(err, errlen, "STEWARD_ADMIN_KEY: must be at least 16 characters");
        goto fail;
    }
    if (cfg->pseudonym_key && strlen(cfg->pseudonym_key) < 16) {
        snprintf(err, errlen, "STEWARD_PSEUDONYM_KEY: must be at least 16 characters");
        goto fail;
    }
    if (!cfg->bind[0]) {
        snprintf(err, errlen, "STEWARD_BIND: must not be empty");
        goto fail;
    }
    if (cfg->http_port != 0 && cfg->http_port == cfg->ws_port) {
        snprintf(err, errlen, "STEWARD_WS_PORT: must differ from STEWARD_HTTP_PORT");
        goto fail;
    }
    return 0;
fail:
    config_release(cfg);
    return -1;
}

void config_release(struct config *cfg)
{
    for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
        if (settings[i].kind == K_STR) {
            char **p = (char **)((char *)cfg + settings[i].offset);
            free(*p);
            *p = NULL;
        }
    }
}

int config_doc_at(size_t i, struct config_doc *out)
{
    if (i >= sizeof(settings) / sizeof(settings[0]))
        return -1;
    out->name = settings[i].name;
    out->def = settings[i].def ? settings[i].def : "(unset)";
    out->help = settings[i].help;
    return 0;
}

/* The fixed part of docs/configuration.md, before the table. */
static const char describe_intro[] =
    "<!-- Generated by `steward config --markdown` from the table in src/core/config.c.\n"
    "     Do not edit by hand: change the table, then run\n"
    "     ./build/steward config --markdown > docs/configuration.md -->\n"
    "# Configuration\n"
    "\n"
    "steward reads its settings from `STEWARD_*` environment variables, once, at start-up.\n"
    "Every value is checked before anything starts: an invalid one stops the process with\n"
    "a message naming the variable and exit status 2. Besides the ranges below, the\n"
    "WebSocket port must differ from the REST port (unless the REST port is 0).\n"
    "\n"
    "Integers are written in decimal. Booleans accept `true`, `false`, `1`, `0`, `yes`,\n"
    "`no`, `on` and `off`, in any case. A variable that is set but empty counts as set:\n"
    "for an integer or a boolean that is an error.\n"
    "\n"
    "`./scripts/run` sets `STEWARD_DATABASE_URL` and `STEWARD_ADMIN_KEY` for its local\n"
    "cluster when they are unset; the Docker image presets `STEWARD_BIND=0.0.0.0` and the\n"
    "two ports (see [operations](operations.md)).\n"
    "\n"
    "| variable | default | allowed values | meaning |\n"
    "|---|---|---|---|\n";

int config_describe(FILE *out)
{
    fputs(describe_intro, out);
    for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
        const struct setting *st = &settings[i];
        fprintf(out, "| `%s` | ", st->name);
        if (!st->def)
            fputs("(unset)", out);
        else if (!st->def[0])
            fputs("(empty)", out);
        else
            fprintf(out, "`%s`", st->def);
        fputs(" | ", out);
        switch (st->kind) {
        case K_STR:
            fputs("text", out);
            break;
        case K_INT:
            fprintf(out, "%ld to %ld", st->min, st->max);
            break;
        case K_BOOL:
            fputs("boolean", out);
            break;
        case K_LEVEL:
            fputs("`debug`, `info`, `warn`, `error`", out);
            break;
        }
        fprintf(out, " | %s |\n", st->help);
    }
    return fflush(out) == 0 && !ferror(out) ? 0 : -1;
}
