/* libwebsockets adapter on a libuv loop this module owns (a "foreign" loop to lws).
 * Only the service thread touches struct lws and the loop; other threads reach a
 * session through the registry (ws->mu) and wake the loop with lws_cancel_service,
 * whose EVENT_WAIT_CANCELLED asks for writeable callbacks.
 *
 * libuv waits in epoll: lws' default poll() loop costs O(open sockets) per wakeup.
 * Life cycle: ws_server_new creates the loop, our two handles (the stop async and the
 * hello timer) and the lws context on that loop; the service thread runs uv_run. To stop,
 * ws_server_stop signals the async handle; its callback, on the loop, destroys the lws
 * context (which closes every socket and lws' own handles through the loop) and closes
 * our handles, so uv_run returns once nothing is left; then the loop is closed. */
#include "steward/ws.h"

#include "ws_int.h"

#include <errno.h>
#include <libwebsockets.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "steward/clock.h"
#include "steward/hash.h"
#include "steward/json.h"
#include "steward/utf8.h"

#define SID_BUCKETS 16384
#define MAX_HANDLERS 16

struct frame {
    struct frame *next;
    size_t len;
    unsigned char data[]; /* LWS_PRE bytes of headroom, then len bytes */
};

struct session {
    struct lws *wsi;
    uint64_t sid;
    /* guarded by ws->mu */
    struct frame *qhead, *qtail;
    size_t qbytes;
    int close_code;
    bool registered;
    bool authed;
    bool pending;
    struct session *pending_next;
    struct hash_node sid_node; /* in ws->by_sid */
    void *tag;                 /* the acceptor's, from ws_session_accept */
    const char *close_reason;  /* a literal or NULL; guarded by ws->mu */
    /* service thread only */
    unsigned char *rx;
    size_t rx_len;
    struct ws_hello_node hello;
    int64_t last_rx_ms; /* the peer's last frame or pong */
    int64_t last_ping_ms;
    int64_t last_tx_ms; /* our last text frame, or the heartbeat's decision to send one */
    bool ping_due;
    bool beat_due; /* a {"type":"heartbeat"} frame is owed, unless another frame goes first */
    struct session *all_prev, *all_next; /* ws->all_head: every established session */
    bool closing;                        /* the close frame is set: further input is ignored */
    int64_t rate_window_ms;              /* over_rate's window start and its count */
    int rate_count;
    bool close_listed;
    bool upgraded; /* ESTABLISHED came: no longer counted in ws->handshakes */
    struct session *close_prev, *close_next;
};

struct handler {
    char type[40];
    bool before_hello;
    ws_frame_fn fn;
    void *ctx;
};

struct ws_server {
    struct ws_server_opts o;
    /* lws writes NULL here (info.pcontext) when the context is fully destroyed */
    struct lws_context *ctx;
    uv_loop_t loop;
    uv_async_t stop_async;
    uv_timer_t hello_timer;
    uv_idle_t close_idle;
    uv_timer_t beat_timer;
    struct ws_hello_fifo hello_q; /* service thread only */
    struct session *close_head;   /* service thread only: see close_later */
    struct session *all_head;     /* service thread only: see beat */
    struct lws_vhost *vhost;
    lws_retry_bo_t retry; /* all zero: lws' own ping/hang-up timers are off, see beat */
    struct lws_protocols protocols[2];
    pthread_t thread;
    bool started;
    atomic_bool stopping;
    int port;
    struct handler handlers[MAX_HANDLERS];
    int nhandlers;
    ws_closed_fn on_closed;
    void *on_closed_ctx;

    pthread_mutex_t mu;
    bool wakeable; /* the context takes lws_cancel_service (until it is destroyed) */
    uint64_t next_sid;
    int connections;      /* admission and stop read it; metrics' ws gauges mirror it */
    int handshakes;       /* service thread only: see admit_connection */
    struct lws *listener; /* service thread only: lws' listening connection, once known */
    /* service thread only, see accept_pause: why the listener is not polled (PAUSE_*
     * bits), since when, and the accept rate's bucket */
    unsigned paused;
    int64_t paused_at_ms;
    double tokens;
    int64_t tokens_at_ms;
    uv_timer_t accept_timer;
    struct session *pending_head;
    struct hash_table by_sid; /* struct session by sid */
};

/* Registry helpers; all with ws->mu held. */
static struct session *find_locked(struct ws_server *ws, uint64_t sid)
{
    for (struct hash_node *n = hash_first(&ws->by_sid, hash_u64(sid)); n; n = hash_next(n)) {
        struct session *s = hash_entry(n, struct session, sid_node);
        if (s->sid == sid)
            return s;
    }
    return NULL;
}

static bool on_service_thread(struct ws_server *ws)
{
    return ws->started && pthread_equal(pthread_self(), ws->thread);
}

/* Queues s for a writeable callback. Returns true when the list was empty: only then
 * must the caller wake the service thread, since a non-empty list has a wake-up in
 * flight that will service s too (one pipe write per batch, not per frame). */
static bool mark_pending_locked(struct ws_server *ws, struct session *s)
{
    if (s->pending)
        return false;
    bool first = ws->pending_head == NULL;
    s->pending = true;
    s->pending_next = ws->pending_head;
    ws->pending_head = s;
    return first;
}

static void service_pending(struct ws_server *ws);

/* Gets pending sessions serviced: directly on the service thread, else by waking it. */
static void wake(struct ws_server *ws)
{
    if (on_service_thread(ws)) {
        service_pending(ws);
        return;
    }
    pthread_mutex_lock(&ws->mu);
    if (ws->wakeable)
        lws_cancel_service(ws->ctx);
    pthread_mutex_unlock(&ws->mu);
}

static void drop_queue_locked(struct ws_server *ws, struct session *s)
{
    struct frame *f = s->qhead;
    while (f) {
        struct frame *next = f->next;
        free(f);
        f = next;
    }
    metrics_gauge_add(ws->o.metrics, MG_WS_QUEUED_BYTES, -(int64_t)s->qbytes);
    s->qhead = s->qtail = NULL;
    s->qbytes = 0;
}

int ws_send(struct ws_server *ws, uint64_t sid, const char *text, size_t len)
{
    struct frame *f = malloc(sizeof(*f) + LWS_PRE + len);
    if (!f)
        return -1;
    f->next = NULL;
    f->len = len;
    memcpy(f->data + LWS_PRE, text, len);
    pthread_mutex_lock(&ws->mu);
    struct session *s = find_locked(ws, sid);
    if (!s || s->close_code) {
        pthread_mutex_unlock(&ws->mu);
        free(f);
        return -1;
    }
    if (s->qbytes + len > (size_t)ws->o.max_queue_bytes) {
        /* the peer does not read: drop it; what it had not acked stays deliverable */
        drop_queue_locked(ws, s);
        s->close_code = WS_CLOSE_POLICY;
        free(f);
        f = NULL;
    } else {
        if (s->qtail)
            s->qtail->next = f;
        else
            s->qhead = f;
        s->qtail = f;
        s->qbytes += len;
        metrics_gauge_add(ws->o.metrics, MG_WS_QUEUED_BYTES, (int64_t)len);
    }
    bool need_wake = mark_pending_locked(ws, s);
    pthread_mutex_unlock(&ws->mu);
    if (need_wake)
        wake(ws);
    return f ? 0 : -1;
}

int ws_send_json(struct ws_server *ws, uint64_t sid, const json_t *frame)
{
    char *text = json_text(frame, NULL);
    if (!text)
        return -1;
    int rc = ws_send(ws, sid, text, strlen(text));
    free(text);
    return rc;
}

void ws_send_error(struct ws_server *ws, uint64_t sid, const char *code, const char *proposal_id)
{
    json_t *f = json_pack("{s:s, s:s}", "type", "error", "code", code);
    if (proposal_id)
        json_object_set_new(f, "proposal_id", json_string(proposal_id));
    ws_send_json(ws, sid, f);
    json_decref(f);
}

void ws_close(struct ws_server *ws, uint64_t sid, int code, const char *reason)
{
    (void)reason;
    bool need_wake = false;
    pthread_mutex_lock(&ws->mu);
    struct session *s = find_locked(ws, sid);
    if (s && !s->close_code) {
        s->close_code = code;
        need_wake = mark_pending_locked(ws, s);
    }
    pthread_mutex_unlock(&ws->mu);
    if (need_wake)
        wake(ws);
}

int ws_session_accept(struct ws_server *ws, uint64_t sid, void *tag)
{
    pthread_mutex_lock(&ws->mu);
    struct session *s = find_locked(ws, sid);
    if (!s || s->authed || s->close_code) {
        pthread_mutex_unlock(&ws->mu);
        return -1;
    }
    s->tag = tag;
    s->authed = true;
    metrics_gauge_add(ws->o.metrics, MG_WS_AUTHENTICATED, 1);
    pthread_mutex_unlock(&ws->mu);
    return 0;
}

static void session_register(struct ws_server *ws, struct session *s, struct lws *wsi)
{
    memset(s, 0, sizeof(*s));
    s->wsi = wsi;
    pthread_mutex_lock(&ws->mu);
    s->sid = ++ws->next_sid;
    hash_insert(&ws->by_sid, &s->sid_node, hash_u64(s->sid));
    s->registered = true;
    ws->connections++;
    metrics_gauge_add(ws->o.metrics, MG_WS_CONNECTIONS, 1);
    if (atomic_load(&ws->stopping))
        s->close_code = WS_CLOSE_SERVICE_RESTART; /* the caller asks for writeable */
    pthread_mutex_unlock(&ws->mu);
}

/* Service thread: the list of established sessions the heartbeat walks. */
static void all_link(struct ws_server *ws, struct session *s)
{
    s->all_prev = NULL;
    s->all_next = ws->all_head;
    if (ws->all_head)
        ws->all_head->all_prev = s;
    ws->all_head = s;
}

static void all_unlink(struct ws_server *ws, struct session *s)
{
    if (s->all_prev)
        s->all_prev->all_next = s->all_next;
    else if (ws->all_head == s)
        ws->all_head = s->all_next;
    else
        return; /* not linked */
    if (s->all_next)
        s->all_next->all_prev = s->all_prev;
    s->all_prev = s->all_next = NULL;
}

/* Service thread: takes s off the list of sessions close_later will close. */
static void close_unlist(struct ws_server *ws, struct session *s)
{
    if (!s->close_listed)
        return;
    if (s->close_prev)
        s->close_prev->close_next = s->close_next;
    else
        ws->close_head = s->close_next;
    if (s->close_next)
        s->close_next->close_prev = s->close_prev;
    s->close_prev = s->close_next = NULL;
    s->close_listed = false;
}

static void session_unregister(struct ws_server *ws, struct session *s)
{
    pthread_mutex_lock(&ws->mu);
    if (!s->registered) {
        pthread_mutex_unlock(&ws->mu);
        return;
    }
    hash_remove(&ws->by_sid, &s->sid_node);
    bool authed = s->authed;
    void *tag = s->tag;
    if (authed)
        metrics_gauge_add(ws->o.metrics, MG_WS_AUTHENTICATED, -1);
    if (s->pending) {
        for (struct session **pp = &ws->pending_head; *pp; pp = &(*pp)->pending_next) {
            if (*pp == s) {
                *pp = s->pending_next;
                break;
            }
        }
    }
    drop_queue_locked(ws, s);
    s->registered = false;
    ws->connections--;
    metrics_gauge_add(ws->o.metrics, MG_WS_CONNECTIONS, -1);
    s->tag = NULL;
    pthread_mutex_unlock(&ws->mu);
    free(s->rx);
    s->rx = NULL;
    ws_hello_remove(&ws->hello_q, &s->hello);
    close_unlist(ws, s);
    all_unlink(ws, s);
    /* the sid is out of the registry: no thread finds the session from now on, and the
     * acceptor may free its tag */
    if (authed && ws->on_closed)
        ws->on_closed(ws->on_closed_ctx, ws, s->sid, tag);
}

static const struct handler *find_handler(struct ws_server *ws, const char *type)
{
    for (int i = 0; i < ws->nhandlers; i++)
        if (strcmp(ws->handlers[i].type, type) == 0)
            return &ws->handlers[i];
    return NULL;
}

static void count_in(struct ws_server *ws, const char *type)
{
    enum metrics_counter c = MC_WS_FRAMES_IN_OTHER;
    if (type && strcmp(type, "device_hello") == 0)
        c = MC_WS_FRAMES_IN_HELLO;
    else if (type && strcmp(type, "scout_proposal_ack") == 0)
        c = MC_WS_FRAMES_IN_ACK;
    metrics_count(ws->o.metrics, c, 1);
}

static void reject(struct ws_server *ws, uint64_t sid, const char *code, bool close_unauthorized)
{
    metrics_count(ws->o.metrics, MC_WS_FRAMES_OUT_ERROR, 1);
    ws_send_error(ws, sid, code, NULL);
    if (close_unauthorized)
        ws_close(ws, sid, WS_CLOSE_UNAUTHORIZED, "unauthorized");
}

void ws_dispatch_frame(struct ws_server *ws, uint64_t sid, bool authed, const char *text,
                       size_t len)
{
    char err[160];
    json_t *f = jv_parse(text, len, err, sizeof(err));
    json_t *type = f ? json_object_get(f, "type") : NULL;
    count_in(ws, json_string_value(type));
    if (!f || !json_is_object(f) || !json_is_string(type)) {
        reject(ws, sid, "bad_frame", !authed);
        json_decref(f);
        return;
    }
    const struct handler *h = find_handler(ws, json_string_value(type));
    if (!authed && (!h || !h->before_hello))
        reject(ws, sid, "unauthorized", true);
    else if (!h)
        reject(ws, sid, "unknown_type", false);
    else
        h->fn(h->ctx, ws, sid, authed, f);
    json_decref(f);
}

/* Idle callback, outside any socket's service: closes what close_later listed. lws
 * sends the close frame when the socket is writeable, then waits (5 s at most) for the
 * peer's answer before it drops the connection. */
static void close_listed(uv_idle_t *h)
{
    struct ws_server *ws = h->data;
    uv_idle_stop(h);
    struct session *s;
    while ((s = ws->close_head) != NULL) {
        close_unlist(ws, s);
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_SYNC);
    }
}

/* Service thread, from a callback of s's own socket: closes s with code and reason
 * (a literal) right after the callback returns. Returning -1 from the callback is the
 * usual way, but Debian's libwebsockets 4.1.6 is built with _DEBUG, and then under
 * libuv lws_service_fd_tsi closes such a socket a second time ("uv repeat test"),
 * which drops it before the close frame is written (the peer sees 1006, not the code).
 * lws_set_timeout(LWS_TO_KILL_SYNC) from outside the socket's service closes it once. */
static void close_later(struct ws_server *ws, struct session *s, int code, const char *reason)
{
    if (s->closing)
        return;
    s->closing = true;
    lws_close_reason(s->wsi, (enum lws_close_status)code, (unsigned char *)reason,
                     reason ? strlen(reason) : 0);
    s->close_prev = NULL;
    s->close_next = ws->close_head;
    if (ws->close_head)
        ws->close_head->close_prev = s;
    ws->close_head = s;
    s->close_listed = true;
    uv_idle_start(&ws->close_idle, close_listed); /* an active idle never blocks the loop */
}

/* Closes s now, dropping what is queued (the peer broke the protocol). */
static void abort_session(struct ws_server *ws, struct session *s, int code, const char *reason)
{
    pthread_mutex_lock(&ws->mu);
    drop_queue_locked(ws, s);
    if (!s->close_code)
        s->close_code = code;
    pthread_mutex_unlock(&ws->mu);
    free(s->rx);
    s->rx = NULL;
    s->rx_len = 0;
    close_later(ws, s, code, reason);
}

/* The frame rate limit: at most max_frames_per_s messages per one-second window
 * (counted before they are parsed, so a flood costs no parsing once it is cut off). */
static bool over_rate(struct ws_server *ws, struct session *s)
{
    if (ws->o.max_frames_per_s <= 0)
        return false;
    if (s->last_rx_ms - s->rate_window_ms >= 1000) {
        s->rate_window_ms = s->last_rx_ms;
        s->rate_count = 0;
    }
    return ++s->rate_count > ws->o.max_frames_per_s;
}

static int on_receive(struct ws_server *ws, struct session *s, struct lws *wsi, const void *in,
                      size_t len)
{
    if (s->closing)
        return 0;
    s->last_rx_ms = clock_now_ms();
    if (s->rx_len + len > WS_MAX_FRAME) {
        abort_session(ws, s, WS_CLOSE_TOO_BIG, "too large");
        return 0;
    }
    unsigned char *nb = realloc(s->rx, s->rx_len + len + 1);
    if (!nb)
        return -1;
    s->rx = nb;
    memcpy(s->rx + s->rx_len, in, len);
    s->rx_len += len;
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
        return 0;
    pthread_mutex_lock(&ws->mu);
    bool authed = s->authed;
    bool closing = s->close_code != 0;
    pthread_mutex_unlock(&ws->mu);
    if (closing) {
        /* its close is decided (queued behind its last frames): nothing more is read or
         * answered, so an unauthenticated flood gets one reply */
    } else if (over_rate(ws, s)) {
        metrics_count(ws->o.metrics, MC_WS_SESSIONS_LIMITED, 1);
        abort_session(ws, s, WS_CLOSE_POLICY, "too many frames");
        return 0;
    } else if (lws_frame_is_binary(wsi)) {
        /* before hello it is closed 4401 like any frame it may not send yet */
        reject(ws, s->sid, "bad_frame", !authed);
    } else if (!utf8_valid(s->rx, s->rx_len)) {
        /* RFC 6455 8.1; lws' own check (LWS_SERVER_OPTION_VALIDATE_UTF8) would close
         * through a -1 return, see close_later */
        abort_session(ws, s, WS_CLOSE_INVALID_DATA, "invalid UTF-8");
        return 0;
    } else {
        s->rx[s->rx_len] = '\0';
        ws_dispatch_frame(ws, s->sid, authed, (const char *)s->rx, s->rx_len);
    }
    free(s->rx);
    s->rx = NULL;
    s->rx_len = 0;
    return 0;
}

#define WRITE_BATCH_BYTES 16384 /* queued frames written per writeable callback, at most */

static int on_writeable(struct ws_server *ws, struct session *s, struct lws *wsi)
{
    if (s->closing)
        return 0;
    if (s->ping_due) {
        s->ping_due = false;
        /* not empty: lws 4.1 does not report an empty pong (RECEIVE_PONG) */
        unsigned char ping[LWS_PRE + 1];
        ping[LWS_PRE] = 'p';
        if (lws_write(wsi, ping + LWS_PRE, 1, LWS_WRITE_PING) < 0)
            return -1;
        pthread_mutex_lock(&ws->mu);
        bool queued = s->qhead != NULL || s->close_code;
        pthread_mutex_unlock(&ws->mu);
        if (queued) {
            lws_callback_on_writable(wsi);
            return 0;
        }
        /* An idle session is owed both at the same beat (nothing came from it and
         * nothing went to it for heartbeat_s), so the heartbeat frame follows the ping
         * in this callback rather than in a second one: a writeable round (two changes
         * of the poll set and a wake-up) less per idle session and interval. Both are a
         * few bytes; what the kernel does not take at once, lws keeps and sends first. */
        if (!s->beat_due)
            return 0;
    }
    /* Queued frames go out several per callback (a hello_ok and the proposals of the
     * hello's pass are queued together), up to WRITE_BATCH_BYTES: each writeable round
     * costs two changes of the poll set and a wake-up. What the kernel does not take
     * at once, lws keeps and sends first; the byte bound keeps that small. */
    size_t written = 0;
    bool wrote = false, more = false;
    int close_code = 0;
    const char *reason = NULL;
    for (;;) {
        pthread_mutex_lock(&ws->mu);
        struct frame *f = s->qhead;
        if (f) {
            s->qhead = f->next;
            if (!s->qhead)
                s->qtail = NULL;
            s->qbytes -= f->len;
            metrics_gauge_add(ws->o.metrics, MG_WS_QUEUED_BYTES, -(int64_t)f->len);
        }
        more = s->qhead != NULL;
        close_code = s->close_code;
        reason = s->close_reason;
        pthread_mutex_unlock(&ws->mu);
        if (!f)
            break;
        int n = lws_write(wsi, f->data + LWS_PRE, f->len, LWS_WRITE_TEXT);
        written += f->len;
        free(f);
        if (n < 0)
            return -1;
        wrote = true;
        if (!more || written >= WRITE_BATCH_BYTES)
            break;
    }
    if (wrote) {
        s->beat_due = false; /* these frames told the peer we are alive */
        s->last_tx_ms = clock_now_ms();
        if (more || close_code)
            lws_callback_on_writable(wsi);
        return 0;
    }
    if (close_code) {
        close_later(ws, s, close_code, reason); /* what was queued is sent */
        return 0;
    }
    if (s->beat_due) {
        s->beat_due = false;
        static const char beat_frame[] = "{\"type\":\"heartbeat\"}";
        unsigned char buf[LWS_PRE + sizeof(beat_frame)];
        memcpy(buf + LWS_PRE, beat_frame, sizeof(beat_frame) - 1);
        if (lws_write(wsi, buf + LWS_PRE, sizeof(beat_frame) - 1, LWS_WRITE_TEXT) < 0)
            return -1;
        s->last_tx_ms = clock_now_ms();
    }
    return 0;
}

static void service_pending(struct ws_server *ws)
{
    pthread_mutex_lock(&ws->mu);
    struct session *s = ws->pending_head;
    ws->pending_head = NULL;
    while (s) {
        struct session *next = s->pending_next;
        s->pending = false;
        s->pending_next = NULL;
        lws_callback_on_writable(s->wsi);
        s = next;
    }
    pthread_mutex_unlock(&ws->mu);
}

void ws_hello_push(struct ws_hello_fifo *q, struct ws_hello_node *n, int64_t deadline_ms)
{
    if (n->queued)
        return;
    if (q->tail && deadline_ms < q->tail->deadline_ms)
        deadline_ms = q->tail->deadline_ms;
    n->deadline_ms = deadline_ms;
    n->next = NULL;
    n->prev = q->tail;
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
    n->queued = true;
    q->len++;
}

void ws_hello_remove(struct ws_hello_fifo *q, struct ws_hello_node *n)
{
    if (!n->queued)
        return;
    if (n->prev)
        n->prev->next = n->next;
    else
        q->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        q->tail = n->prev;
    n->prev = n->next = NULL;
    n->queued = false;
    q->len--;
}

struct ws_hello_node *ws_hello_pop_due(struct ws_hello_fifo *q, int64_t now)
{
    struct ws_hello_node *n = q->head;
    if (!n || n->deadline_ms > now)
        return NULL;
    ws_hello_remove(q, n);
    return n;
}

int64_t ws_hello_next_due(const struct ws_hello_fifo *q, int64_t now)
{
    if (!q->head)
        return -1;
    return q->head->deadline_ms > now ? q->head->deadline_ms - now : 0;
}

static void hello_sweep(uv_timer_t *t);

/* Service thread: the hello timer is armed for the oldest waiting session only. */
static void hello_arm(struct ws_server *ws, int64_t now)
{
    int64_t due = ws_hello_next_due(&ws->hello_q, now);
    if (due >= 0)
        uv_timer_start(&ws->hello_timer, hello_sweep, (uint64_t)due, 0);
}

/* A new session must say device_hello within hello_timeout_s. */
static void hello_expect(struct ws_server *ws, struct session *s)
{
    int64_t now = clock_now_ms();
    bool was_empty = ws->hello_q.head == NULL;
    ws_hello_push(&ws->hello_q, &s->hello, now + (int64_t)ws->o.hello_timeout_s * 1000);
    if (was_empty && !uv_is_closing((uv_handle_t *)&ws->hello_timer))
        hello_arm(ws, now);
}

/* Closes (4408) every overdue session that has not authenticated; authenticated ones
 * just leave the queue. ws_session_accept refuses a session once close_code is set, so
 * a hello that races the deadline either wins entirely or loses entirely. */
static void hello_sweep(uv_timer_t *t)
{
    struct ws_server *ws = t->data;
    int64_t now = clock_now_ms();
    bool need_wake = false;
    struct ws_hello_node *n;
    pthread_mutex_lock(&ws->mu);
    while ((n = ws_hello_pop_due(&ws->hello_q, now)) != NULL) {
        struct session *s = (struct session *)((char *)n - offsetof(struct session, hello));
        if (s->authed || s->close_code)
            continue;
        s->close_code = WS_CLOSE_HELLO_TIMEOUT;
        s->close_reason = "hello timeout";
        need_wake |= mark_pending_locked(ws, s);
    }
    pthread_mutex_unlock(&ws->mu);
    if (need_wake)
        service_pending(ws);
    hello_arm(ws, now);
}

/* How often the heartbeat walks the sessions: a quarter of the interval, 0.25 to 5 s. */
/* The cap on handshakes in progress. libwebsockets keeps every connection's timeouts in
 * one list sorted by deadline, and a connection in its handshake takes two of them, each
 * inserted by walking the list from its head: with thousands of handshakes at once (a
 * reconnect storm fills the accept queue, and lws accepts all of it in one go) that walk
 * was a quarter of the whole machine's CPU in the 100,000-device storm (perf, bench/run's
 * fleet step), and lws' handshake timeout (5 s) then reset the connections it had
 * accepted and not yet read, so their clients came again and the work was done twice.
 * So once max_handshakes are in progress (accepted, not yet upgraded to a WebSocket or
 * closed), the listener stops being polled: further connections wait in the kernel's
 * accept queue (listen_backlog deep, as far as net.core.somaxconn allows) and are
 * accepted when half of the handshakes are done. Nobody is refused. The same pause
 * holds the accepts to accept_rate per second when that is set (a token bucket of a
 * tenth of a second's accepts), so that a storm leaves the database room for other
 * work. lws accepts everything queued in one loop, which polls the listener's events
 * again after each accept, so a pause takes effect at once. The count follows lws'
 * create and destroy notifications of every accepted connection; a handshake ends
 * within lws' timeout, so a pause for handshakes that outlasts ACCEPT_STALL_MS means a
 * count that went wrong (a failed adoption inside lws frees one silently): beat then
 * resets it. */
enum { ACCEPT_STALL_MS = 15000, PAUSE_HANDSHAKES = 1, PAUSE_RATE = 2 };

static void accept_pause(struct ws_server *ws, unsigned why, bool pause)
{
    unsigned was = ws->paused;
    unsigned now = pause ? was | why : was & ~why;
    if (!ws->listener || !was == !now) {
        ws->paused = ws->listener ? now : 0;
        return;
    }
    if (lws_rx_flow_control(ws->listener, now ? 0 : 1) < 0)
        return;
    ws->paused = now;
    if (now) {
        ws->paused_at_ms = clock_now_ms();
        metrics_count(ws->o.metrics, MC_WS_ACCEPT_PAUSED, 1);
    }
}

static void accept_resume_rate(uv_timer_t *t)
{
    accept_pause(t->data, PAUSE_RATE, false);
}

/* Whether a connection just accepted may stay: its descriptor, the handshakes' and the
 * sessions' fit in the instance's share of the open-file limit (max_connections, see
 * src/app/sizing.c). One past it is closed at once, so that accepts never meet the limit
 * itself: lws answers EMFILE by returning to the loop with the connection still queued,
 * and the listener, still readable, brings it straight back (a core spent until a
 * descriptor frees). A refused connection costs one accept and one close. */
static bool admit_connection(struct ws_server *ws, struct lws *listener)
{
    ws->listener = listener; /* the filter callback runs on the listening connection */
    pthread_mutex_lock(&ws->mu);
    bool full = ws->connections + ws->handshakes >= ws->o.max_connections;
    pthread_mutex_unlock(&ws->mu);
    if (full) {
        metrics_count(ws->o.metrics, MC_WS_ACCEPT_REFUSED, 1);
        return false;
    }
    /* this connection is counted by its create notification, right after */
    if (ws->o.max_handshakes > 0 && ws->handshakes + 1 >= ws->o.max_handshakes)
        accept_pause(ws, PAUSE_HANDSHAKES, true);
    if (ws->o.accept_rate <= 0)
        return true;
    int64_t now = clock_now_ms();
    double burst = ws->o.accept_rate / 10.0 < 1 ? 1 : ws->o.accept_rate / 10.0;
    ws->tokens += (double)(now - ws->tokens_at_ms) * ws->o.accept_rate / 1000.0;
    if (ws->tokens > burst)
        ws->tokens = burst;
    ws->tokens_at_ms = now;
    ws->tokens -= 1;
    if (ws->tokens < 1) {
        uint64_t wait = (uint64_t)((1 - ws->tokens) * 1000.0 / ws->o.accept_rate) + 1;
        accept_pause(ws, PAUSE_RATE, true);
        uv_timer_start(&ws->accept_timer, accept_resume_rate, wait, 0);
    }
    return true;
}

static void handshake_done(struct ws_server *ws)
{
    if (ws->handshakes > 0)
        ws->handshakes--;
    if ((ws->paused & PAUSE_HANDSHAKES) && ws->handshakes <= ws->o.max_handshakes / 2)
        accept_pause(ws, PAUSE_HANDSHAKES, false);
}

static void accept_watch(struct ws_server *ws, int64_t now)
{
    if (!(ws->paused & PAUSE_HANDSHAKES) || now - ws->paused_at_ms < ACCEPT_STALL_MS)
        return;
    char n[24];
    snprintf(n, sizeof(n), "%d", ws->handshakes);
    log_msg(ws->o.lg, LOG_WARN, "device accepts paused too long: handshake count reset",
            "handshakes", n, NULL);
    ws->handshakes = 0;
    accept_pause(ws, PAUSE_HANDSHAKES, false);
}

/* The kernel's queue of connections not yet accepted: lws listens with SOMAXCONN
 * (4096); a reconnect storm of more devices than that per instance would have the rest
 * of their connection attempts dropped and retried by their TCP stack a second, then
 * three, then seven seconds later. listen() again on the listening socket sets the
 * deeper queue (Linux bounds it by net.core.somaxconn). lws does not hand out its
 * listening socket, so it is the one of ours listening on the port it reports. */
static void deepen_backlog(struct ws_server *ws)
{
    if (ws->o.listen_backlog <= 0)
        return;
    int found = 0;
    for (int fd = 0; fd < 1024; fd++) {
        int on = 0;
        socklen_t olen = sizeof(on);
        struct sockaddr_storage a;
        socklen_t alen = sizeof(a);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &olen) != 0 || !on ||
            getsockname(fd, (struct sockaddr *)&a, &alen) != 0)
            continue;
        int port = a.ss_family == AF_INET    ? ntohs(((struct sockaddr_in *)&a)->sin_port)
                   : a.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&a)->sin6_port)
                                             : -1;
        if (port != ws->port)
            continue;
        found++;
        if (listen(fd, ws->o.listen_backlog) != 0)
            log_msg(ws->o.lg, LOG_WARN, "cannot deepen the device accept queue", "error",
                    strerror(errno), NULL);
    }
    if (!found)
        log_msg(ws->o.lg, LOG_WARN,
                "device listening socket not found; its accept queue keeps libwebsockets' "
                "depth",
                NULL);
}

static uint64_t beat_period_ms(const struct ws_server *ws)
{
    uint64_t p = (uint64_t)ws->o.heartbeat_s * 1000 / 4;
    return p < 250 ? 250 : p > 5000 ? 5000 : p;
}

/* The heartbeat, one timer for every session (lws' own ping and hang-up timers cost a
 * sorted insert into a list of every connection's timers, O(connections), on each
 * connect). A session whose peer sent nothing (no frame, no pong) for heartbeat_s is
 * pinged, again every heartbeat_s of silence; one silent for 2 * heartbeat_s + 5 is
 * dropped without a close frame (the peer is gone). An authenticated session we sent no
 * frame for heartbeat_s gets {"type":"heartbeat"}: browsers cannot see pings, so that is
 * how a client notices a half-open connection. O(sessions) per beat, a few times per
 * interval; the lock is taken only for sessions due a heartbeat frame. */
static void beat(uv_timer_t *t)
{
    struct ws_server *ws = t->data;
    int64_t now = clock_now_ms();
    int64_t ping_after = (int64_t)ws->o.heartbeat_s * 1000;
    int64_t drop_after = ((int64_t)ws->o.heartbeat_s * 2 + 5) * 1000;
    int64_t walk = (int64_t)beat_period_ms(ws);
    accept_watch(ws, now);
    struct session *next;
    for (struct session *s = ws->all_head; s; s = next) {
        next = s->all_next; /* a drop unlinks s (its CLOSED runs inside) */
        if (s->closing)
            continue;
        int64_t idle = now - s->last_rx_ms;
        if (idle >= drop_after) {
            s->closing = true;
            lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
            continue;
        }
        bool beat_now = false;
        if (now - s->last_tx_ms >= ping_after && !s->beat_due) {
            pthread_mutex_lock(&ws->mu);
            beat_now = s->authed;
            pthread_mutex_unlock(&ws->mu);
        }
        /* A session owed a heartbeat frame is pinged with it once silent for all but one
         * walk of heartbeat_s: its last pong came just after the last ping, so otherwise
         * the ping would fall one walk behind the frame and take a writeable round of
         * its own (see on_writeable). */
        bool ping_now = now - s->last_ping_ms >= ping_after &&
                        idle >= (beat_now ? ping_after - walk : ping_after);
        if (ping_now) {
            s->ping_due = true;
            s->last_ping_ms = now;
        }
        if (beat_now) {
            s->beat_due = true;
            s->last_tx_ms = now;
        }
        if (ping_now || beat_now)
            lws_callback_on_writable(s->wsi);
    }
}

static bool path_ok(struct lws *wsi)
{
    char uri[128];
    int n = lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI);
    return n > 0 && strcmp(uri, WS_PATH) == 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    struct ws_server *ws = lws_context_user(lws_get_context(wsi));
    struct session *s = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
        return admit_connection(ws, wsi) ? 0 : 1;
    case LWS_CALLBACK_WSI_CREATE:
        ws->handshakes++;
        return 0;
    case LWS_CALLBACK_WSI_DESTROY:
        /* user is the session only once the upgrade bound it (else NULL or zeroed) */
        if (!s || !s->upgraded)
            handshake_done(ws);
        return 0;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        pthread_mutex_lock(&ws->mu);
        bool full = ws->connections >= ws->o.max_connections;
        pthread_mutex_unlock(&ws->mu);
        return full || !path_ok(wsi) || atomic_load(&ws->stopping) ? 1 : 0;
    }
    case LWS_CALLBACK_ESTABLISHED:
        handshake_done(ws);
        session_register(ws, s, wsi);
        s->upgraded = true;
        hello_expect(ws, s);
        s->last_rx_ms = s->last_tx_ms = clock_now_ms();
        all_link(ws, s);
        if (atomic_load(&ws->stopping))
            lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        return on_receive(ws, s, wsi, in, len);
    case LWS_CALLBACK_RECEIVE_PONG:
        s->last_rx_ms = clock_now_ms();
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writeable(ws, s, wsi);
    case LWS_CALLBACK_CLOSED:
        session_unregister(ws, s);
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        service_pending(ws);
        return 0;
    default:
        return 0;
    }
}

static void lws_emit(int level, const char *line)
{
    /* libwebsockets' own diagnostics. Its callback has no context argument, so a logger
     * on the stack writes them: the same JSON lines (with ts) as every other. */
    struct logger lg = {LOG_WARN, stderr};
    char raw[400];
    snprintf(raw, sizeof(raw), "%s", line);
    raw[strcspn(raw, "\n")] = '\0';
    int saved = errno; /* lws may log between a failed call and its look at errno */
    log_msg(&lg, level == LLL_ERR ? LOG_ERROR : LOG_WARN, "libwebsockets", "detail", raw, NULL);
    errno = saved;
}

/* On the loop: destroys the lws context, which closes every socket and lws' own
 * handles through the loop (their close callbacks finish the destruction), and closes
 * our handles, so uv_run returns when the last close has run. */
static void on_stop_async(uv_async_t *a)
{
    struct ws_server *ws = a->data;
    pthread_mutex_lock(&ws->mu);
    ws->wakeable = false;
    pthread_mutex_unlock(&ws->mu);
    /* lws may free the listener before the connections whose destroy notifications
     * would resume accepts on it: no pause or resume from here on */
    ws->listener = NULL;
    ws->paused = 0;
    uv_timer_stop(&ws->accept_timer);
    if (ws->ctx)
        lws_context_destroy(ws->ctx);
    uv_timer_stop(&ws->hello_timer);
    if (!uv_is_closing((uv_handle_t *)&ws->hello_timer))
        uv_close((uv_handle_t *)&ws->hello_timer, NULL);
    uv_idle_stop(&ws->close_idle);
    if (!uv_is_closing((uv_handle_t *)&ws->close_idle))
        uv_close((uv_handle_t *)&ws->close_idle, NULL);
    uv_timer_stop(&ws->beat_timer);
    if (!uv_is_closing((uv_handle_t *)&ws->beat_timer))
        uv_close((uv_handle_t *)&ws->beat_timer, NULL);
    uv_timer_stop(&ws->accept_timer);
    if (!uv_is_closing((uv_handle_t *)&ws->accept_timer))
        uv_close((uv_handle_t *)&ws->accept_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&ws->stop_async))
        uv_close((uv_handle_t *)&ws->stop_async, NULL);
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* With no service thread left: lets pending closes run, finishes the context if lws
 * could not, and closes the loop. */
static void close_loop(struct ws_server *ws)
{
    if (!uv_is_closing((uv_handle_t *)&ws->stop_async))
        on_stop_async(&ws->stop_async);
    uv_run(&ws->loop, UV_RUN_DEFAULT);
    if (ws->ctx)
        lws_context_destroy(ws->ctx);
    if (uv_loop_close(&ws->loop) != 0) {
        /* lws left a handle open: close it rather than leak the loop */
        uv_walk(&ws->loop, close_any, NULL);
        uv_run(&ws->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&ws->loop) != 0)
            log_msg(ws->o.lg, LOG_WARN, "the WebSocket event loop did not close", NULL);
    }
}

struct ws_server *ws_server_new(const struct ws_server_opts *o, char *err, size_t errlen)
{
    struct ws_server *ws = calloc(1, sizeof(*ws));
    if (!ws || hash_init(&ws->by_sid, SID_BUCKETS) != 0) {
        snprintf(err, errlen, "out of memory");
        free(ws);
        return NULL;
    }
    ws->o = *o;
    pthread_mutex_init(&ws->mu, NULL);
    lws_set_log_level(LLL_ERR, lws_emit);

    ws->protocols[0].name = "steward-device";
    ws->protocols[0].callback = callback;
    ws->protocols[0].per_session_data_size = sizeof(struct session);
    ws->protocols[0].rx_buffer_size = 4096;

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    info.port = o->port;
    info.iface = o->bind;
    info.protocols = ws->protocols;
    info.user = ws;
    info.retry_and_idle_policy = &ws->retry;
    info.options = 0; /* UTF-8 is checked in on_receive */
    if (!strchr(o->bind, ':'))
        info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    /* No fd_limit_per_thread: below the process's open-file limit it makes lws look a
     * socket up by walking its whole table of descriptors (wsi_from_fd goes from an
     * index to a scan when the limit is "unrelated to ulimit"), O(sessions) on every
     * event, accept and close: half of steward's CPU in a storm of 19,000. Sized for the
     * open-file limit, the table is indexed by descriptor (8 bytes per possible one,
     * zero pages until used); the session cap is steward's own (max_connections). */
    /* The vhost (the listener) is created on its own below: when it fails, the context
     * is intact and comes down the normal way (a failed default vhost makes lws start
     * destroying the context inside lws_create_context, which on a foreign loop
     * leaves uv handles whose callbacks are in the plugin lws has already unloaded). */
    info.options |= LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
    void *loops[1] = {&ws->loop};
    info.foreign_loops = loops;
    info.pcontext = &ws->ctx;

    int rc = uv_loop_init(&ws->loop);
    if (rc != 0) {
        snprintf(err, errlen, "cannot create the event loop: %s", uv_strerror(rc));
        pthread_mutex_destroy(&ws->mu);
        hash_release(&ws->by_sid);
        free(ws);
        return NULL;
    }
    uv_async_init(&ws->loop, &ws->stop_async, on_stop_async);
    ws->stop_async.data = ws;
    uv_timer_init(&ws->loop, &ws->hello_timer);
    ws->hello_timer.data = ws;
    uv_idle_init(&ws->loop, &ws->close_idle);
    ws->close_idle.data = ws;
    uv_timer_init(&ws->loop, &ws->beat_timer);
    ws->beat_timer.data = ws;
    uv_timer_init(&ws->loop, &ws->accept_timer);
    ws->accept_timer.data = ws;
    ws->ctx = lws_create_context(&info);
    ws->vhost = ws->ctx ? lws_create_vhost(ws->ctx, &info) : NULL;
    if (!ws->vhost) {
        snprintf(err, errlen,
                 "cannot listen on %s:%d (STEWARD_WS_PORT), or libwebsockets' libuv event "
                 "loop is missing (Debian package libwebsockets-evlib-uv)",
                 o->bind, o->port);
        close_loop(ws);
        pthread_mutex_destroy(&ws->mu);
        hash_release(&ws->by_sid);
        free(ws);
        return NULL;
    }
    ws->wakeable = true;
    ws->port = lws_get_vhost_listen_port(ws->vhost);
    deepen_backlog(ws);
    return ws;
}

int ws_server_on(struct ws_server *ws, const char *type, bool before_hello, ws_frame_fn fn,
                 void *ctx)
{
    if (ws->nhandlers >= MAX_HANDLERS)
        return -1;
    struct handler *h = &ws->handlers[ws->nhandlers++];
    snprintf(h->type, sizeof(h->type), "%s", type);
    h->before_hello = before_hello;
    h->fn = fn;
    h->ctx = ctx;
    return 0;
}

void ws_server_on_closed(struct ws_server *ws, ws_closed_fn fn, void *ctx)
{
    ws->on_closed = fn;
    ws->on_closed_ctx = ctx;
}

static void *service_loop(void *arg)
{
    struct ws_server *ws = arg;
    uv_run(&ws->loop, UV_RUN_DEFAULT); /* returns after on_stop_async's closes */
    return NULL;
}

int ws_server_start(struct ws_server *ws)
{
    /* before the thread exists: the loop is this thread's until pthread_create */
    uv_timer_start(&ws->beat_timer, beat, beat_period_ms(ws), beat_period_ms(ws));
    ws->started = true;
    if (pthread_create(&ws->thread, NULL, service_loop, ws) != 0) {
        ws->started = false;
        return -1;
    }
    return 0;
}

int ws_server_port(const struct ws_server *ws)
{
    return ws->port;
}

void ws_server_stop(struct ws_server *ws, int timeout_ms)
{
    if (!ws)
        return;
    atomic_store(&ws->stopping, true);
    pthread_mutex_lock(&ws->mu);
    struct hash_iter it = hash_iter(&ws->by_sid);
    for (struct hash_node *n; (n = hash_iter_next(&it)) != NULL;) {
        struct session *s = hash_entry(n, struct session, sid_node);
        if (!s->close_code)
            s->close_code = WS_CLOSE_SERVICE_RESTART;
        mark_pending_locked(ws, s);
    }
    pthread_mutex_unlock(&ws->mu);
    wake(ws);
    for (int waited = 0; ws->started && waited < timeout_ms; waited += 10) {
        pthread_mutex_lock(&ws->mu);
        int n = ws->connections;
        pthread_mutex_unlock(&ws->mu);
        if (n == 0)
            break;
        usleep(10000);
    }
    if (ws->started) {
        uv_async_send(&ws->stop_async); /* the one uv call that is thread-safe */
        pthread_join(ws->thread, NULL);
        ws->started = false;
    }
    close_loop(ws);
    pthread_mutex_destroy(&ws->mu);
    hash_release(&ws->by_sid);
    free(ws);
}
