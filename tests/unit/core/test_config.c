#include <stdio.h>
#include <string.h>

#include "steward/config.h"
#include "unit.h"

struct env {
    const char *names[8];
    const char *values[8];
};

static const char *fake_get(const char *name, void *arg)
{
    struct env *e = arg;
    for (int i = 0; i < 8 && e->names[i]; i++)
        if (strcmp(e->names[i], name) == 0)
            return e->values[i];
    return NULL;
}

static int load(struct env *e, struct config *cfg, char *err)
{
    return config_load(cfg, fake_get, e, err, 256);
}

int main(void)
{
    struct config cfg;
    char err[256];
    struct env none = {{NULL}, {NULL}};
    CHECK(load(&none, &cfg, err) == 0);
    CHECK(cfg.http_port == 8080 && cfg.ws_port == 8081);
    CHECK(cfg.db_pool_size == 8 && cfg.db_acquire_timeout_ms == 2000);
    CHECK(cfg.http_threads == 4 && cfg.log_level == LOG_INFO);
    CHECK(cfg.http_loops == 0 && cfg.http_park_ms == 2);
    CHECK_STR(cfg.bind, "127.0.0.1");
    CHECK(cfg.lessons_enabled && cfg.lessons_dedup_window_s == 3600);
    CHECK(cfg.max_inflight == 32 && cfg.ack_timeout_s == 300 && cfg.max_delivery_attempts == 10);
    CHECK(cfg.heal_interval_s == 900 && cfg.perf_interval_s == 7200);
    CHECK(cfg.admin_key == NULL);
    CHECK_STR(cfg.database_listen_url, cfg.database_url);
    config_release(&cfg);

    struct env good = {{"STEWARD_HTTP_PORT", "STEWARD_LESSONS_ENABLED", "STEWARD_LOG_LEVEL",
                        "STEWARD_DATABASE_URL", NULL},
                       {"9000", "false", "WARN", "postgresql:///x", NULL}};
    CHECK(load(&good, &cfg, err) == 0);
    CHECK(cfg.http_port == 9000 && !cfg.lessons_enabled && cfg.log_level == LOG_WARN);
    CHECK_STR(cfg.database_listen_url, "postgresql:///x");
    config_release(&cfg);

    struct env bad_port = {{"STEWARD_HTTP_PORT", NULL}, {"80x", NULL}};
    CHECK(load(&bad_port, &cfg, err) == -1);
    CHECK(strstr(err, "STEWARD_HTTP_PORT") != NULL);

    struct env big = {{"STEWARD_DB_POOL_SIZE", NULL}, {"100000", NULL}};
    CHECK(load(&big, &cfg, err) == -1 && strstr(err, "STEWARD_DB_POOL_SIZE"));
    struct env zero = {{"STEWARD_DB_POOL_SIZE", NULL}, {"0", NULL}};
    CHECK(load(&zero, &cfg, err) == -1 && strstr(err, "STEWARD_DB_POOL_SIZE"));
    struct env empty = {{"STEWARD_HTTP_THREADS", NULL}, {"", NULL}};
    CHECK(load(&empty, &cfg, err) == -1 && strstr(err, "STEWARD_HTTP_THREADS"));
    struct env park = {{"STEWARD_HTTP_PARK_MS", NULL}, {"1001", NULL}};
    CHECK(load(&park, &cfg, err) == -1 && strstr(err, "STEWARD_HTTP_PARK_MS"));
    struct env park0 = {{"STEWARD_HTTP_PARK_MS", NULL}, {"0", NULL}};
    CHECK(load(&park0, &cfg, err) == 0 && cfg.http_park_ms == 0);
    config_release(&cfg);
    struct env boolx = {{"STEWARD_LESSONS_ENABLED", NULL}, {"maybe", NULL}};
    CHECK(load(&boolx, &cfg, err) == -1 && strstr(err, "STEWARD_LESSONS_ENABLED"));
    struct env lvl = {{"STEWARD_LOG_LEVEL", NULL}, {"loud", NULL}};
    CHECK(load(&lvl, &cfg, err) == -1 && strstr(err, "STEWARD_LOG_LEVEL"));
    struct env key = {{"STEWARD_ADMIN_KEY", NULL}, {"short", NULL}};
    CHECK(load(&key, &cfg, err) == -1 && strstr(err, "STEWARD_ADMIN_KEY"));
    CHECK(strstr(err, "short") == NULL); /* the secret itself is never echoed */
    struct env same = {{"STEWARD_HTTP_PORT", "STEWARD_WS_PORT", NULL}, {"9000", "9000", NULL}};
    CHECK(load(&same, &cfg, err) == -1 && strstr(err, "STEWARD_WS_PORT"));
    struct env neg = {{"STEWARD_ACK_TIMEOUT_S", NULL}, {"-5", NULL}};
    CHECK(load(&neg, &cfg, err) == -1 && strstr(err, "STEWARD_ACK_TIMEOUT_S"));

    struct config_doc d;
    CHECK(config_doc_at(0, &d) == 0 && strncmp(d.name, "STEWARD_", 8) == 0);
    CHECK(config_doc_at(100000, &d) == -1);
    return unit_done();
}
