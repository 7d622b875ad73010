/* In-process counters, gauges and histograms, updated lock-free (relaxed atomics) on hot
 * paths. A leaf: it knows no route table, transport or database. Whoever renders the
 * figures (the Prometheus exporter in src/app, the healer's reports) names the route
 * slots itself. */
#ifndef STEWARD_METRICS_H
#define STEWARD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_LAT_BUCKETS 14
#define METRICS_STATUS_SLOTS 20

/* Upper bounds (seconds) of the request duration histogram; the last bucket is +Inf. */
extern const double metrics_lat_bounds[METRICS_LAT_BUCKETS - 1];
/* HTTP statuses counted separately; anything else lands in the last slot as "other". */
extern const int metrics_statuses[METRICS_STATUS_SLOTS - 1];

/* Named counters other modules bump. */
enum metrics_counter {
    MC_WS_FRAMES_IN_HELLO,
    MC_WS_FRAMES_IN_ACK,
    MC_WS_FRAMES_IN_OTHER,
    MC_WS_FRAMES_OUT_HELLO_OK,
    MC_WS_FRAMES_OUT_PROPOSAL,
    MC_WS_FRAMES_OUT_ACK_OK,
    MC_WS_FRAMES_OUT_RESOLVED,
    MC_WS_FRAMES_OUT_ERROR,
    MC_PROPOSALS_QUEUED,
    MC_PROPOSALS_DELIVERED,
    MC_PROPOSALS_ACKED,
    MC_PROPOSALS_EXPIRED,
    MC_PROPOSALS_FAILED,
    MC_HEAL_RUNS,
    MC_LESSONS_RECORDED,
    MC_HEAL_SKIPPED,                /* sweeps this instance skipped because the turn was taken */
    MC_HEAL_FAILURES,               /* sweep steps that failed */
    MC_PERF_REPORTS,                /* performance reports written by this instance */
    MC_HTTP_PARKED,                 /* loop requests suspended after waiting STEWARD_HTTP_PARK_MS */
    MC_LESSONS_DEFERRED,            /* internal lessons queued for a background retry */
    MC_LESSONS_DROPPED,             /* internal lessons lost because the retry queue was full */
    MC_DELIVERY_FIRST,              /* proposals sent to a device for the first time */
    MC_DELIVERY_LAG_US,             /* their summed time from triage to that first send, in us */
    MC_LESSONS_FAILED,              /* lessons that could not be written (the journal is failing) */
    MC_WS_HELLO_REJECTED_MALFORMED, /* hellos without a device id and token of the right form */
    MC_WS_HELLO_REJECTED_TOKEN,     /* hellos naming no device with that token */
    MC_WS_HELLO_REJECTED_BUSY,      /* hellos refused because the database was away */
    MC_WS_SESSIONS_LIMITED,         /* sessions closed 1008 for frames in flight */
    MC_WS_QUEUE_FULL,               /* acks refused because the work queue was full */
    MC_PRESENCE_RELEASE_STATEMENTS, /* statements releasing devices whose sockets closed */
    MC_PRESENCE_RELEASED,           /* devices those statements carried */
    MC_WS_HELLO_STATEMENTS,         /* token-check statements, each for a batch of hellos */
    MC_PASS_STATEMENTS,             /* delivery pass statements (one user or a group) */
    MC_INGEST_STATEMENTS,           /* statements writing single ingests (each a group) */
    MC_WS_ACK_STATEMENTS,           /* ack statements, each for a batch of acks */
    MC_WS_ACCEPT_PAUSED,            /* accepts paused: handshakes at their cap */
    MC_WS_ACCEPT_REFUSED,           /* connections closed at accept: sockets at their cap */
    MC_COUNT
};

/* Named gauges: levels that go up and down, kept by the module that owns the thing. */
enum metrics_gauge {
    MG_WS_CONNECTIONS,    /* open device WebSocket connections */
    MG_WS_AUTHENTICATED,  /* of those, the ones that completed device_hello */
    MG_WS_QUEUED_BYTES,   /* bytes queued for sending on all of them */
    MG_LESSONS_QUEUED,    /* internal lessons waiting in the retry queue */
    MG_HEAL_LAST_SWEEP_S, /* unix time this instance last finished a sweep; 0: never */
    MG_COUNT
};

struct metrics;

/* A plain copy of the figures of one route slot, for reports that diff two moments. */
struct metrics_route_snap {
    uint64_t by_status[METRICS_STATUS_SLOTS];
    uint64_t buckets[METRICS_LAT_BUCKETS]; /* per bucket, not cumulative */
    uint64_t sum_us;
};

/* All figures at zero, with nroutes route slots (indices 0..nroutes-1, as the route
 * table numbers its routes) plus one last slot for requests no route matched. NULL when
 * out of memory or nroutes is absurd (> METRICS_MAX_ROUTES). Free with metrics_free
 * (NULL is a no-op). */
#define METRICS_MAX_ROUTES 65536
struct metrics *metrics_new(size_t nroutes);
void metrics_free(struct metrics *m);

/* The number of route slots including the "unmatched" one (nroutes + 1); that one is
 * always the last, metrics_route_slots(m) - 1. */
size_t metrics_route_slots(const struct metrics *m);

/* Records one request: the route's index, or -1 when nothing matched (any index outside
 * 0..nroutes-1 is counted as unmatched). Lock-free (relaxed atomics); micros is the
 * request duration. */
void metrics_http_observe(struct metrics *m, int route_index, int status, int64_t micros);
/* Adds n to a named counter (m may be NULL: nothing happens). Lock-free. */
void metrics_count(struct metrics *m, enum metrics_counter c, uint64_t n);
/* The current value of a named counter. */
uint64_t metrics_counter_value(const struct metrics *m, enum metrics_counter c);
/* Adds delta (may be negative) to a named gauge (m may be NULL: nothing happens).
 * Lock-free. */
void metrics_gauge_add(struct metrics *m, enum metrics_gauge g, int64_t delta);
/* Sets a named gauge (m may be NULL: nothing happens). Lock-free. */
void metrics_gauge_set(struct metrics *m, enum metrics_gauge g, int64_t value);
/* The current value of a named gauge. */
int64_t metrics_gauge_value(const struct metrics *m, enum metrics_gauge g);
/* Copies the figures of one route slot (0..metrics_route_slots(m)-1; all zero for a slot
 * outside that range). The copy is not atomic as a whole: a request finishing meanwhile
 * may show in one field and not yet in another, which a later snapshot evens out. */
void metrics_route_snapshot(const struct metrics *m, size_t slot, struct metrics_route_snap *out);
/* Estimated quantile q (0..1) in seconds from histogram bucket counts; 0 when empty. */
double metrics_quantile(const uint64_t *buckets, size_t nbuckets, const double *bounds, double q);

#endif /* STEWARD_METRICS_H */
