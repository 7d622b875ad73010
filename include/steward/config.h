/* Settings from STEWARD_* environment variables, validated once at start-up. */
#ifndef STEWARD_CONFIG_H
#define STEWARD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "steward/log.h"

struct config {
    char *database_url;        /* STEWARD_DATABASE_URL; "" = libpq defaults (PG* vars) */
    char *database_listen_url; /* STEWARD_DATABASE_LISTEN_URL; defaults to database_url */
    char *database_pooler;     /* STEWARD_DATABASE_POOLER: "none" or "transaction" */
    bool database_pooler_txn;  /* database_pooler is "transaction" */
    char *bind;                /* STEWARD_BIND */
    char *admin_key;           /* STEWARD_ADMIN_KEY, NULL when unset; never logged */
    char *pseudonym_key;       /* STEWARD_PSEUDONYM_KEY, NULL when unset; never logged */
    enum log_level log_level;  /* STEWARD_LOG_LEVEL */
    bool access_log;           /* STEWARD_ACCESS_LOG */
    int http_port;
    int ws_port;
    int db_pool_size;
    int db_acquire_timeout_ms;
    int db_statement_timeout_ms;
    int http_threads;
    int http_loops; /* 0: derived from the CPU count */
    int http_park_ms;
    int worker_threads;
    int shutdown_timeout_s;
    int drain_s;
    /* lessons */
    bool lessons_enabled;
    int lessons_dedup_window_s;
    int lessons_record_wait_ms;
    int lessons_queue_max;
    /* scouts and delivery */
    int proposal_ttl_days;
    int ack_timeout_s;
    int max_delivery_attempts;
    int max_inflight;
    int ws_max_queue_bytes;
    int ws_heartbeat_s;
    int ws_hello_timeout_s;
    int ws_max_connections;
    int ws_max_frames_per_s;
    int ws_max_handshakes;
    int ws_listen_backlog;
    int ws_accept_rate;
    int ws_max_frames_in_flight;
    int worker_queue_max;
    int ws_hello_batch;
    int http_max_connections;
    int http_max_connections_per_address;
    int http_header_timeout_s;
    /* healer */
    int heal_interval_s;
    int perf_interval_s;
    int heal_offset_s;
    int perf_offset_s;
    int instance_heartbeat_s;
    int stuck_after_s;
    int archive_after_days;
    int degraded_db_latency_ms;
    int degraded_pool_waiting;
    int perf_pool_wait_p95_ms;
    int perf_error_rate_pct;
    int perf_route_p99_ms;
    /* auth cache */
    int auth_cache_refresh_ms;
    /* the Observation Deck */
    bool deck;
    char *deck_dir;
    bool deck_secure_cookie;
    int deck_session_ttl_s;
};

/* Reads one variable; returns NULL when unset. Lets tests feed values. */
typedef const char *(*config_getenv_fn)(const char *name, void *arg);

/* Fills cfg from the environment through get (getenv when get is NULL). On error
 * returns -1 and writes a message naming the variable into err; cfg is released.
 * On success the strings in cfg are owned by cfg: free them with config_release. */
int config_load(struct config *cfg, config_getenv_fn get, void *arg, char *err, size_t errlen);

void config_release(struct config *cfg);

/* Describes every setting (name, default, meaning), one at a time. */
struct config_doc {
    const char *name;
    const char *def;
    const char *help;
};
/* Fills out with setting number i; returns -1 past the last one. */
int config_doc_at(size_t i, struct config_doc *out);

/* Writes docs/configuration.md (a fixed introduction and a table of every setting:
 * variable, default, allowed values, meaning) to out; `steward config --markdown`.
 * Returns 0, or -1 when writing failed. */
int config_describe(FILE *out);

#endif
