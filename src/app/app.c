/* Wiring: builds the application context, serves until SIGTERM/SIGINT, tears down in
 * reverse order. Capabilities are created and their routes registered here. */
#include "steward/app.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "exporter.h"
#include "steward/clock.h"
#include "steward/err.h"
#include "steward/json.h"
#include "steward/migrate.h"
#include "steward/dbpipe.h"
#include "steward/lessons.h"
#include "steward/listen.h"
#include "steward/audit.h"

#include "steward/planner.h"

#include "steward/bonds.h"

#include "steward/scouts.h"
#include "steward/users.h"

/* The parts of an erasure (DELETE /v1/users/{user_id}, src/users): each capability that
 * holds something about users erases its share in the one transaction. */
static int bonds_part_erase_tx(void *ctx, struct pool_conn *c, const char *user_id,
                               const char *pseudonym, json_t *counts)
{
    (void)pseudonym;
    return bonds_erase_user_tx(ctx, c, user_id, counts);
}

static int scouts_part_erase_tx(void *ctx, struct pool_conn *c, const char *user_id,
                                const char *pseudonym, json_t *counts)
{
    (void)pseudonym;
    return scouts_erase_user_tx(ctx, c, user_id, counts);
}

/* closes the user's sockets on this instance (the others act on the notification) */
static void scouts_part_erased(void *ctx, const char *user_id)
{
    scouts_user_erased(ctx, user_id);
}

static int lessons_part_erase_tx(void *ctx, struct pool_conn *c, const char *user_id,
                                 const char *pseudonym, json_t *counts)
{
    return lessons_erase_user_tx(ctx, c, user_id, pseudonym, counts);
}

static int wire_users(struct app *app)
{
    app->users = users_new(app->pool, &app->log, app->cfg.pseudonym_key);
    if (!app->users)
        return -1;
    const struct users_part parts[] = {
        {bonds_part_erase_tx, NULL, app->bonds},
        {scouts_part_erase_tx, scouts_part_erased, app->scouts},
        {lessons_part_erase_tx, NULL, app->lessons},
    };
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        if (users_add_part(app->users, &parts[i]) != 0)
            return -1;
    return 0;
}

#include "steward/healer.h"
#include "steward/deck.h"

/* The healer reaches the other capabilities only through these hooks (ctx = the app). */
static int healer_hook_lessons_snapshot(void *ctx, json_t **out)
{
    return lessons_snapshot(((struct app *)ctx)->lessons, out);
}

static bool healer_hook_record_lesson(void *ctx, const char *lesson_type, const char *work_item_id,
                                      const char *stage, json_t *detail)
{
    return lessons_record_auto(((struct app *)ctx)->lessons, lesson_type, work_item_id, stage,
                               detail);
}

static int healer_hook_delivery_pass(void *ctx, long long *requeued, long long *failed)
{
    return scouts_delivery_sweep(((struct app *)ctx)->scouts, requeued, failed);
}

static int healer_hook_expire_proposals(void *ctx, long long *count)
{
    return scouts_expire(((struct app *)ctx)->scouts, count);
}

static int healer_hook_delivery_stats(void *ctx, int64_t since_us, json_t **out)
{
    return scouts_delivery_stats(((struct app *)ctx)->scouts, since_us, out);
}

static int healer_hook_recover_stuck(void *ctx, int stuck_after_s, long long *count)
{
    return planner_recover_stuck(((struct app *)ctx)->planner, stuck_after_s, count);
}

static int healer_hook_mark_missing_outcomes(void *ctx, long long *total, long long *marked)
{
    return planner_mark_missing_outcomes(((struct app *)ctx)->planner, total, marked);
}

static int healer_hook_archive_actions(void *ctx, int archive_after_days, long long *count)
{
    return planner_archive_failed(((struct app *)ctx)->planner, archive_after_days, count);
}

static int healer_hook_action_stats(void *ctx, int64_t since_us, long long *succeeded,
                                    long long *failed)
{
    return planner_action_stats(((struct app *)ctx)->planner, since_us, succeeded, failed);
}

static void healer_wire_hooks(struct app *app, struct healer_hooks *hk)
{
    if (app->planner) {
        hk->recover_stuck = healer_hook_recover_stuck;
        hk->archive_actions = healer_hook_archive_actions;
        hk->mark_missing_outcomes = healer_hook_mark_missing_outcomes;
        hk->action_stats = healer_hook_action_stats;
    }
    if (app->scouts) {
        hk->delivery_pass = healer_hook_delivery_pass;
        hk->expire_proposals = healer_hook_expire_proposals;
        hk->delivery_stats = healer_hook_delivery_stats;
    }
    if (app->lessons) {
        hk->lessons_snapshot = healer_hook_lessons_snapshot;
        hk->record_lesson = healer_hook_record_lesson;
    }
}

#define STARTUP_DB_WAIT_S 30

static int load_config(struct app *app)
{
    char err[256];
    if (config_load(&app->cfg, NULL, NULL, err, sizeof(err)) != 0) {
        struct logger lg = {LOG_INFO, stderr};
        log_msg(&lg, LOG_ERROR, "invalid configuration", "error", err, NULL);
        return -1;
    }
    app->log.level = app->cfg.log_level;
    app->log.out = stderr;
    return 0;
}

/* Applies migrations, waiting a while for a database that is still starting. */
static int migrate_with_wait(struct app *app)
{
    char err[512];
    for (int waited = 0;; waited++) {
        int rc = migrate_run(app->cfg.database_url, &app->log, err, sizeof(err));
        if (rc == 0)
            return 0;
        if (rc != MIGRATE_ECONNECT || waited >= STARTUP_DB_WAIT_S) {
            log_msg(&app->log, LOG_ERROR, "migrations failed; not starting", "error", err, NULL);
            return -1;
        }
        if (waited == 0)
            log_msg(&app->log, LOG_WARN, "database not reachable yet; retrying", "error", err,
                    NULL);
        sleep(1);
    }
}

static const char *ops_listen_problem(void *arg)
{
    return scouts_listen_problem(arg);
}

static int register_routes(struct app *app)
{
    int rc = 0;
    app->ops.pool = app->pool;
    app->ops.listen_problem = app->scouts ? ops_listen_problem : NULL;
    app->ops.listen_arg = app->scouts;
    rc |= ops_http_register(&app->router, &app->ops);
    app->msrc.m = app->metrics;
    app->msrc.router = &app->router;
    app->msrc.pool = app->pool;
    app->msrc.dbpipe = app->dbpipe;
    rc |= exporter_register(&app->router, &app->msrc);
    rc |= lessons_http_register(&app->router, app->lessons);
    rc |= audit_http_register(&app->router, app->audit);
    rc |= auth_http_register(&app->router, app->auth);
    rc |= planner_http_register(&app->router, app->planner);
    rc |= bonds_http_register(&app->router, app->bonds);
    rc |= users_http_register(&app->router, app->users);
    rc |= scouts_http_register(&app->router, app->scouts);
    rc |= healer_http_register(&app->router, app->healer);
    rc |= auth_sessions_http_register(&app->router, app->auth);
    rc |= deck_http_register(&app->router, app->deck);
    return rc;
}

static int create_ws(struct app *app)
{
    char err[256];
    struct ws_server_opts wo = {
        .bind = app->cfg.bind,
        .port = app->cfg.ws_port,
        .hello_timeout_s = app->cfg.ws_hello_timeout_s,
        .heartbeat_s = app->cfg.ws_heartbeat_s,
        .max_queue_bytes = app->cfg.ws_max_queue_bytes,
        .max_connections = app->fdb.ws_max_connections,
        .max_frames_per_s = app->cfg.ws_max_frames_per_s,
        .max_handshakes = app->cfg.ws_max_handshakes,
        .listen_backlog = app->cfg.ws_listen_backlog,
        .accept_rate = app->cfg.ws_accept_rate,
        .lg = &app->log,
        .metrics = app->metrics,
    };
    app->ws = ws_server_new(&wo, err, sizeof(err));
    if (!app->ws)
        log_msg(&app->log, LOG_ERROR, "cannot start the WebSocket server", "error", err, NULL);
    return app->ws ? 0 : -1;
}

/* Capabilities in dependency order: lessons is used by planner, scouts and healer;
 * users erases through bonds, scouts and lessons; the healer reaches the others through
 * hooks. */
static int create_capabilities(struct app *app)
{
    app->lessons = lessons_new(app->pool, &app->log, app->metrics, app->cfg.lessons_enabled,
                               app->cfg.lessons_dedup_window_s);
    if (!app->lessons)
        return -1;
    app->audit = audit_new(app->pool, &app->log);
    if (!app->audit)
        return -1;
    lessons_configure(app->lessons, app->cfg.lessons_queue_max, app->cfg.lessons_record_wait_ms);
    app->planner = planner_new(app->pool, &app->log, app->lessons);
    if (!app->planner)
        return -1;
    struct scouts_settings ss = {
        .proposal_ttl_days = app->cfg.proposal_ttl_days,
        .ack_timeout_s = app->cfg.ack_timeout_s,
        .max_delivery_attempts = app->cfg.max_delivery_attempts,
        .max_inflight = app->cfg.max_inflight,
        .ws_heartbeat_s = app->cfg.ws_heartbeat_s,
        .ws_max_frames_in_flight = app->cfg.ws_max_frames_in_flight,
        .worker_queue_max = app->cfg.worker_queue_max,
        .ws_hello_batch = app->cfg.ws_hello_batch,
    };
    app->scouts =
        scouts_new(app->pool, &app->log, app->metrics, app->workq, app->ws, app->lessons, &ss);
    if (!app->scouts)
        return -1;
    app->bonds = bonds_new(app->pool, &app->log, app->dbpipe);
    if (!app->bonds || wire_users(app) != 0)
        return -1;
    struct healer_settings hs = {
        .heal_interval_s = app->cfg.heal_interval_s,
        .perf_interval_s = app->cfg.perf_interval_s,
        .stuck_after_s = app->cfg.stuck_after_s,
        .archive_after_days = app->cfg.archive_after_days,
        .degraded_db_latency_ms = app->cfg.degraded_db_latency_ms,
        .degraded_pool_waiting = app->cfg.degraded_pool_waiting,
        .perf_pool_wait_p95_ms = app->cfg.perf_pool_wait_p95_ms,
        .perf_error_rate_pct = app->cfg.perf_error_rate_pct,
        .perf_route_p99_ms = app->cfg.perf_route_p99_ms,
        .started_us = app->started_us,
        .instance_heartbeat_s = app->cfg.instance_heartbeat_s,
        .heal_offset_s = app->cfg.heal_offset_s,
        .perf_offset_s = app->cfg.perf_offset_s,
    };
    struct healer_hooks hk = {.ctx = app};
    healer_wire_hooks(app, &hk);
    /* the performance report names the metrics' route slots; label_routes fills them */
    size_t nroutes = metrics_route_slots(app->metrics) - 1;
    app->route_labels = calloc(nroutes + 1, sizeof(*app->route_labels));
    if (!app->route_labels)
        return -1;
    app->healer =
        healer_new(app->pool, &app->log, app->metrics, app->route_labels, nroutes, &hs, &hk);
    struct deck_opts dopts = {.enabled = app->cfg.deck, .dir = app->cfg.deck_dir};
    app->deck = deck_new(app->pool, &app->log, &dopts);
    auth_sessions_configure(app->auth, app->cfg.deck_session_ttl_s, app->cfg.deck_secure_cookie);
    return app->healer && app->deck ? 0 : -1;
}

/* How many routes register_routes adds: the metrics get one slot per route, and they
 * are created before the capabilities whose routes are registered. */
static size_t route_count(void)
{
    struct app scratch;
    memset(&scratch, 0, sizeof(scratch));
    router_init(&scratch.router);
    return register_routes(&scratch) == 0 ? scratch.router.count : ROUTER_MAX_ROUTES;
}

/* After register_routes: the route table must be the one route_count counted, slot for
 * slot; the healer's labels then point into it. */
static int label_routes(struct app *app)
{
    if (app->router.count != metrics_route_slots(app->metrics) - 1)
        return -1;
    for (size_t i = 0; i < app->router.count; i++)
        app->route_labels[i] =
            (struct healer_route){app->router.routes[i].method, app->router.routes[i].pattern};
    return 0;
}

static int start_servers(struct app *app)
{
    if (register_routes(app) != 0) {
        log_msg(&app->log, LOG_ERROR, "route table full", NULL);
        return -1;
    }
    if (label_routes(app) != 0) {
        log_msg(&app->log, LOG_ERROR, "route table differs from its count", NULL);
        return -1;
    }
    if (scouts_ws_register(app->ws, app->scouts) != 0 ||
        scouts_start(app->scouts, app->sched, app->listener) != 0 ||
        listener_start(app->listener) != 0) {
        log_msg(&app->log, LOG_ERROR, "cannot start proposal delivery", NULL);
        return -1;
    }
    if (lessons_start(app->lessons, app->sched) != 0) {
        log_msg(&app->log, LOG_ERROR, "cannot schedule the lessons retry job", NULL);
        return -1;
    }
    if (healer_start(app->healer, app->sched) != 0) {
        log_msg(&app->log, LOG_ERROR, "cannot schedule the healer's jobs", NULL);
        return -1;
    }
    if (ws_server_start(app->ws) != 0)
        return -1;
    char err[256];
    struct http_server_opts ho = {
        .bind = app->cfg.bind,
        .port = app->cfg.http_port,
        .loops = app->http_loops,
        .threads = app->cfg.http_threads,
        .park_ms = app->cfg.http_park_ms,
        .access_log = app->cfg.access_log,
        .max_connections = app->fdb.http_max_connections,
        .max_per_address = app->cfg.http_max_connections_per_address,
        .header_timeout_s = app->cfg.http_header_timeout_s,
        .router = &app->router,
        .auth = &app->verifier,
        .metrics = app->metrics,
        .lg = &app->log,
        .guest = &app->dbpipe_guest,
    };
    app->http = http_server_start(&ho, err, sizeof(err));
    if (!app->http) {
        log_msg(&app->log, LOG_ERROR, "cannot start the HTTP server", "error", err, NULL);
        return -1;
    }
    return 0;
}

/* The dbpipe's lanes as the HTTP loops' guest. */
static void *guest_attach(void *ctx)
{
    return dbpipe_lane_attach(ctx);
}
_Static_assert(HTTP_GUEST_FDS >= DBPIPE_LANE_FDS, "the HTTP loop polls every lane connection");
static int guest_flush(void *st, struct pollfd *fds, int *timeout_ms)
{
    return dbpipe_lane_flush(st, fds, timeout_ms);
}
static void guest_service(void *st, const struct pollfd *fds, int n)
{
    dbpipe_lane_service(st, fds, n);
}
static bool guest_busy(void *st)
{
    return dbpipe_lane_busy(st);
}
static void guest_detach(void *st)
{
    dbpipe_lane_detach(st);
}

/* Raises the soft open-file limit to the hard one and shares it between the HTTP and
 * WebSocket connections (app_fd_budget); the log line gives the split. */
static struct app_fd_budget fd_budget(struct app *app)
{
    struct rlimit rl;
    long nofile = 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur < rl.rlim_max) {
            struct rlimit up = {rl.rlim_max, rl.rlim_max};
            if (setrlimit(RLIMIT_NOFILE, &up) == 0)
                rl = up;
        }
        nofile =
            rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 100000000 ? 100000000 : (long)rl.rlim_cur;
    }
    struct app_fd_budget b = app_fd_budget(&app->cfg, nofile, app->http_loops);
    struct log_line l;
    bool lowered = b.http_max_connections < app->cfg.http_max_connections ||
                   b.ws_max_connections < app->cfg.ws_max_connections;
    /* info: with the default caps most hosts' limits (20,000 here) lower them, which is
     * what this line is for, not a fault */
    log_begin(&l, &app->log, LOG_INFO, "descriptor budget");
    log_int(&l, "nofile", nofile);
    log_int(&l, "reserve", b.reserve);
    log_int(&l, "http_max_connections", b.http_max_connections);
    log_int(&l, "ws_max_connections", b.ws_max_connections);
    if (lowered)
        log_str(&l, "detail",
                "the open-file limit cannot hold the configured connection caps: both were "
                "lowered; raise the limit (ulimit -n, LimitNOFILE=) to keep them");
    log_end(&l);
    return b;
}

static int build(struct app *app)
{
    app->started_us = jtime_now_us();
    if (migrate_with_wait(app) != 0)
        return -1;
    app->pool =
        pool_new(app->cfg.database_url, app->cfg.db_pool_size, app->cfg.db_acquire_timeout_ms,
                 app->cfg.db_statement_timeout_ms, &app->log);
    if (app->pool)
        pool_set_txn_pooler(app->pool, app->cfg.database_pooler_txn);
    app->metrics = metrics_new(route_count());
    struct app_sizing z = app_size(&app->cfg, sysconf(_SC_NPROCESSORS_ONLN));
    app->http_loops = z.http_loops;
    app->fdb = fd_budget(app);
    app->workq = workq_new(z.worker_threads);
    /* one thread for every periodic job; the runs go to the work queue */
    app->sched = app->workq ? sched_new(app->workq) : NULL;
    if (app->sched && sched_start(app->sched) != 0) {
        sched_free(app->sched);
        app->sched = NULL;
    }
    app->dbpipe = app->pool ? dbpipe_new(app->pool, z.dbpipe_threads, z.dbpipe_lanes,
                                         app->cfg.db_acquire_timeout_ms, &app->log)
                            : NULL;
    app->dbpipe_guest = (struct http_loop_guest){
        .ctx = app->dbpipe,
        .attach = guest_attach,
        .flush = guest_flush,
        .service = guest_service,
        .busy = guest_busy,
        .detach = guest_detach,
    };
    app->auth = app->pool ? auth_new(app->pool, &app->log, app->cfg.auth_cache_refresh_ms) : NULL;
    app->listener = listener_new(app->cfg.database_listen_url, &app->log);
    if (!app->pool || !app->metrics || !app->workq || !app->sched || !app->dbpipe || !app->auth ||
        !app->listener)
        return -1;
    app->verifier = auth_verifier(app->auth);
    router_init(&app->router);
    if (app->cfg.admin_key &&
        auth_key_ensure(app->pool, "admin-env", app->cfg.admin_key, AUTH_ADMIN) != ST_OK) {
        log_msg(&app->log, LOG_ERROR, "cannot ensure STEWARD_ADMIN_KEY", NULL);
        return -1;
    }
    if (auth_start(app->auth, app->sched, app->listener) != ST_OK || create_ws(app) != 0 ||
        create_capabilities(app) != 0)
        return -1;
    return start_servers(app);
}

/* Reverse order: no new requests, then the periodic jobs (they call into the
 * capabilities, auth and the pool; a run in progress finishes on the still running work
 * queue), then the listener, then delivery, then the sockets, then the workers, then
 * everything else. */
static void teardown(struct app *app)
{
    int ms = app->cfg.shutdown_timeout_s * 1000;
    struct deadline until = deadline_in_ms(ms);
    if (app->http)
        http_server_stop(app->http, ms / 2);
    sched_stop(app->sched);
    listener_stop(app->listener);        /* no notification is handled after it */
    healer_instance_retire(app->healer); /* no heartbeat after sched_stop */
    scouts_stop(app->scouts);
    if (app->ws)
        ws_server_stop(app->ws, ms / 4);
    workq_free(app->workq);
    sched_free(app->sched);
    /* nothing records any more: write what the journal still queues, in the time left */
    if (app->pool)
        lessons_flush(app->lessons, deadline_left_ms(until));
    dbpipe_free(app->dbpipe);
    healer_free(app->healer);
    users_free(app->users);
    deck_free(app->deck);
    bonds_free(app->bonds);
    listener_free(app->listener);
    scouts_free(app->scouts);
    planner_free(app->planner);
    lessons_free(app->lessons);
    audit_free(app->audit);
    auth_free(app->auth);
    metrics_free(app->metrics);
    free(app->route_labels);
    pool_free(app->pool);
    config_release(&app->cfg);
}

/* The first signal starts the drain: /readyz answers 503 at once while every route is
 * still served for STEWARD_DRAIN_S, long enough for a load balancer's health check to take
 * this instance out; a second signal cuts it short. teardown then closes the device
 * sockets with 1012 (service restart), so devices reconnect to another instance. */
static void drain(struct app *app, const sigset_t *set, int sig)
{
    const char *name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
    atomic_store(&app->ops.draining, true);
    if (app->cfg.drain_s > 0) {
        struct log_line l;
        log_begin(&l, &app->log, LOG_INFO, "draining");
        log_str(&l, "signal", name);
        log_int(&l, "drain_s", app->cfg.drain_s);
        log_end(&l);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += app->cfg.drain_s;
        for (;;) {
            struct timespec now, left;
            clock_gettime(CLOCK_MONOTONIC, &now);
            left.tv_sec = until.tv_sec - now.tv_sec;
            left.tv_nsec = until.tv_nsec - now.tv_nsec;
            if (left.tv_nsec < 0) {
                left.tv_sec--;
                left.tv_nsec += 1000000000L;
            }
            if (left.tv_sec < 0)
                break;
            int got = sigtimedwait(set, NULL, &left);
            if (got == SIGTERM || got == SIGINT) {
                log_msg(&app->log, LOG_WARN, "second signal: drain cut short", NULL);
                break;
            }
            if (got < 0 && errno == EAGAIN)
                break;
        }
    }
    log_msg(&app->log, LOG_INFO, "shutting down", "signal", name, NULL);
}

static void block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    pthread_sigmask(SIG_BLOCK, set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int app_routes(bool with_scope)
{
    struct app app;
    memset(&app, 0, sizeof(app));
    router_init(&app.router);
    if (register_routes(&app) != 0)
        return 1;
    for (size_t i = 0; i < app.router.count; i++) {
        const struct route *rt = &app.router.routes[i];
        if (with_scope)
            printf("%s %s %s\n", rt->method, rt->pattern,
                   auth_scope_name((enum auth_scope)rt->scope));
        else
            printf("%s %s\n", rt->method, rt->pattern);
    }
    return 0;
}

int app_serve(void)
{
    struct app app;
    memset(&app, 0, sizeof(app));
    if (load_config(&app) != 0)
        return 2;
    sigset_t set;
    block_signals(&set);
    if (build(&app) != 0) {
        teardown(&app);
        return 1;
    }
    struct log_line l;
    log_begin(&l, &app.log, LOG_INFO, "serving");
    log_str(&l, "version", STEWARD_VERSION);
    log_str(&l, "bind", app.cfg.bind);
    log_int(&l, "http_port", http_server_port(app.http));
    log_int(&l, "ws_port", ws_server_port(app.ws));
    log_int(&l, "http_loops", app.http_loops);
    log_int(&l, "http_threads", app.cfg.http_threads);
    log_int(&l, "schema_version", migrate_latest());
    log_end(&l);
    int sig = 0;
    sigwait(&set, &sig);
    drain(&app, &set, sig);
    teardown(&app);
    struct logger lg = {LOG_INFO, stderr};
    log_msg(&lg, LOG_INFO, "stopped", NULL);
    return 0;
}

int app_migrate(void)
{
    struct app app;
    memset(&app, 0, sizeof(app));
    if (load_config(&app) != 0)
        return 2;
    char err[512];
    int rc = migrate_run(app.cfg.database_url, &app.log, err, sizeof(err));
    if (rc != 0)
        log_msg(&app.log, LOG_ERROR, "migrations failed", "error", err, NULL);
    else
        log_msg(&app.log, LOG_INFO, "schema is current", NULL);
    config_release(&app.cfg);
    return rc == 0 ? 0 : 1;
}

static int with_pool(struct app *app)
{
    if (load_config(app) != 0)
        return 2;
    app->pool = pool_new(app->cfg.database_url, 1, app->cfg.db_acquire_timeout_ms,
                         app->cfg.db_statement_timeout_ms, &app->log);
    if (app->pool)
        pool_set_txn_pooler(app->pool, app->cfg.database_pooler_txn);
    return app->pool ? 0 : 1;
}

int app_keys_create(const char *name, const char *scope_name)
{
    enum auth_scope scope;
    if (!auth_name_valid(name)) {
        fprintf(stderr, "steward: --name must be 1 to 64 of A-Z a-z 0-9 . _ -\n");
        return 2;
    }
    if (auth_scope_parse(scope_name, &scope) != 0) {
        fprintf(stderr, "steward: --scope must be read, service or admin\n");
        return 2;
    }
    struct app app;
    memset(&app, 0, sizeof(app));
    int rc = with_pool(&app);
    if (rc == 0) {
        char secret[AUTH_SECRET_CAP];
        int err = auth_key_create(app.pool, name, scope, secret, sizeof(secret));
        if (err == ST_OK) {
            printf("%s\n", secret);
            fprintf(stderr, "created %s key '%s'; the secret above is shown only once\n",
                    scope_name, name);
        } else {
            fprintf(stderr, "steward: cannot create key '%s': %s\n", name,
                    err == ST_ECONFLICT ? "an active key has that name" : st_strerror(err));
            rc = 1;
        }
    }
    pool_free(app.pool);
    config_release(&app.cfg);
    return rc;
}

int app_keys_revoke(const char *name)
{
    struct app app;
    memset(&app, 0, sizeof(app));
    int rc = with_pool(&app);
    if (rc == 0) {
        int err = auth_key_revoke(app.pool, name);
        if (err == ST_OK) {
            fprintf(stderr, "revoked key '%s'\n", name);
        } else {
            fprintf(stderr, "steward: cannot revoke key '%s': %s\n", name,
                    err == ST_ENOTFOUND ? "no active key has that name" : st_strerror(err));
            rc = 1;
        }
    }
    pool_free(app.pool);
    config_release(&app.cfg);
    return rc;
}

/* GET /readyz over a plain socket, so container images need no curl. */
int app_healthcheck(void)
{
    struct app app;
    memset(&app, 0, sizeof(app));
    if (load_config(&app) != 0)
        return 2;
    const char *host = app.cfg.bind;
    if (strcmp(host, "0.0.0.0") == 0)
        host = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        host = "::1";
    struct sockaddr_storage ss = {0};
    socklen_t slen;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)app.cfg.http_port);
        slen = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)app.cfg.http_port);
        slen = sizeof(*a6);
    } else {
        config_release(&app.cfg);
        return 1;
    }
    int status = 0;
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    struct timeval tv = {3, 0};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    if (fd >= 0 && connect(fd, (struct sockaddr *)&ss, slen) == 0) {
        static const char req[] = "GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n";
        char resp[64] = {0};
        if (write(fd, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1) &&
            read(fd, resp, sizeof(resp) - 1) > 12)
            sscanf(resp, "HTTP/%*s %d", &status);
    }
    if (fd >= 0)
        close(fd);
    config_release(&app.cfg);
    if (status != 200)
        fprintf(stderr, "steward: not ready (status %d)\n", status);
    return status == 200 ? 0 : 1;
}
