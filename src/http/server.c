/* libmicrohttpd adapter: per-request state is allocated on the first call, the body is
 * accumulated up to HTTP_BODY_LIMIT, the handler runs on the final call, and the state
 * is freed (and the access line written) in the completion callback. */
#include "steward/clock.h"
#include "steward/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "steward/crypto.h"
#include "steward/err.h"
#include "steward/hash.h"
#include "steward/http.h"
#include "steward/json.h"
#include "steward/problem.h"
#include "steward/workq.h"

/* Per-connection memory of libmicrohttpd (request line, headers, buffers). Its default
 * is 32 KiB, which it clears on every request; 16 KiB still takes about 12 KiB of
 * request headers (larger ones are answered 431) and halves that cost. */
#define HTTP_CONN_MEMORY (16 * 1024)

/* libmicrohttpd's idle timeout of a connection (reset by every byte). */
#define HTTP_IDLE_S 30

/* One HTTP thread: its own daemon in external polling mode, driven by poll() on the
 * daemon's epoll descriptor, the shared listening socket, a wake-up eventfd and the
 * guest's descriptors. Every loop watches the listening socket and takes at most one
 * new connection per wake-up, so a burst of connections spreads evenly over the loops
 * (libmicrohttpd's own accept takes up to ten at a time on whichever loop woke first). */
/* One open connection, from libmicrohttpd's connection notification to its close:
 * its descriptor and client address (the per-address count), and its place in the
 * loop's queue of request heads still awaited. */
struct conn_ctx {
    struct http_loop *loop;
    int fd;
    unsigned char addr[16];
    unsigned alen;
    bool counted;        /* in the per-address table */
    int64_t head_due_us; /* when the awaited request head must be complete */
    int which;           /* the head queue it is in (HEAD_*), or -1 */
    struct conn_ctx *prev, *next;
};

/* Heads awaited: on a new connection (due header_timeout after it opened), and on a
 * kept-alive one after an answer (due idle timeout + header_timeout after it). Every
 * entry of a queue has the same delay, so arrival order is deadline order. */
enum { HEAD_NEW, HEAD_KEPT, HEAD_QUEUES };
struct head_queue {
    struct conn_ctx *head, *tail;
};

struct http_loop {
    struct http_server *srv;
    struct head_queue heads[HEAD_QUEUES]; /* loop thread only */
    int64_t emfile_log_us;                /* the last "out of descriptors" line */
    long emfile_skipped;                  /* accept failures since, not logged */
    struct MHD_Daemon *daemon;
    int epoll_fd; /* the daemon's */
    int wake_fd;
    pthread_t thread;
    pthread_t self; /* the same, as the loop thread itself saw it when it started */
    bool running;
    /* Loop-thread only. Deferred requests waiting unsuspended for their answer (see
     * DEFER_WAITING), and whether the last run of libmicrohttpd made progress: called
     * back for anything but a request still waiting (a new request, a response queued,
     * a request completed), or an answer arrived since. libmicrohttpd often needs
     * another run to go on (it writes a queued response, or reads the next request on
     * a keep-alive connection, only on its next run). */
    int waiting;
    bool progress;
    int64_t now_us; /* the clock at the start of the current run */
    /* Request states kept for reuse: at about 3 KiB each they are past malloc's
     * per-thread cache, and its slow path cost 3% of a bond read. */
    struct reqstate *spare;
    int nspare;
};

#define LOOP_SPARE_MAX 64

struct http_server {
    struct http_server_opts o;
    int port;
    int listen_fd;
    int nloops;
    int64_t park_us;
    struct http_loop *loops;
    struct workq *handlers; /* the HTTP threads: handlers that may wait on the database */
    atomic_bool stopping;   /* stop accepting */
    atomic_bool closing;    /* leave once nothing is pending */
    atomic_int inflight;
    atomic_int suspended; /* deferred requests not finished yet */
    atomic_uint_fast64_t next_id;
    char id_prefix[17];
    int64_t header_us; /* STEWARD_HTTP_HEADER_TIMEOUT_S */
    /* open connections per client address (when max_per_address > 0) */
    pthread_mutex_t addr_mu;
    struct hash_table by_addr;
};

struct addr_count {
    struct hash_node node;
    unsigned char addr[16];
    unsigned alen;
    int n;
};

struct reqstate;

/* A deferred request is first left in place, unsuspended: its connection sits in
 * libmicrohttpd's ready list and the handler is asked again on every run of the loop,
 * which costs nothing like the two epoll_ctl calls (and the spurious read) a suspend and
 * resume take. The answer usually arrives within one round trip to the database. One
 * still missing after STEWARD_HTTP_PARK_MS is parked (suspended) so that it costs nothing while
 * it waits, say on a row lock; the handler threads' requests are parked from the start.
 * dstate moves from WAITING or PARKED to DONE (the completion, any thread) or to ORPHANED
 * (the connection closed first, loop thread); whichever comes second frees what is left. */
enum defer_state { DEFER_WAITING, DEFER_PARKED, DEFER_DONE, DEFER_ORPHANED };

/* A deferred answer: inside the server it lives in the request state; for direct calls
 * (no transport) it is allocated and writes into the caller's response. */
struct http_deferred {
    struct reqstate *rs;
    struct http_resp *resp;
};

struct reqstate {
    struct http_server *srv;
    struct http_loop *loop;
    struct MHD_Connection *conn;
    struct http_deferred defer;
    struct http_resp dresp; /* filled by the deferred work */
    struct http_req req;    /* kept for a handler thread */
    json_t *body_json;
    /* A key missing from the auth snapshot: checked against the database on a handler
     * thread rather than on the event loop. Points into the request's headers. */
    const char *auth_secret;
    /* A console session cookie with the request's CSRF header, as the verifier takes it. */
    char session_secret[AUTH_SESSION_SECRET_MAX];
    /* The key lookup that decides a request before its body is read (AUTH_*). */
    int auth_stage;
    /* answer with "Connection: close" (a request whose framing cannot be trusted) */
    bool must_close;
    bool on_handler_thread;
    /* While a handler runs on a handler thread: where http_defer records that it was
     * called (on that thread's stack: rs may be freed as soon as the handler returns). */
    bool *handler_deferred;
    bool deferred;
    bool in_wait;      /* counted in loop->waiting */
    atomic_int dstate; /* enum defer_state, while deferred */
    int64_t wait_since_us;
    int64_t start_us;
    struct route_match match;
    struct auth_principal who;
    char request_id[72];
    struct log_scope scope; /* the trace id of a valid traceparent, else empty */
    char traceparent[56];   /* echoed when valid */
    int early_status;
    char early_detail[160];
    const char *early_slug;
    int status;
    bool has_body;
    char *body;
    size_t body_len;
    size_t nquery;
    char *query_keys[HTTP_MAX_QUERY];
    char *query_vals[HTTP_MAX_QUERY];
    bool bad_query;
    bool too_large;
    bool counted;
    char method[12];
    struct reqstate *next_spare;
};

/* ---- per-address counts (srv->addr_mu) and the queues of awaited request heads ---- */

static void addr_of(const struct sockaddr *sa, unsigned char out[16], unsigned *len)
{
    memset(out, 0, 16);
    *len = 0;
    if (sa->sa_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        *len = 4;
    } else if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        *len = 16;
    }
}

static uint64_t addr_hash(const unsigned char a[16])
{
    uint64_t x, y;
    memcpy(&x, a, 8);
    memcpy(&y, a + 8, 8);
    return hash_u64(x ^ (y * 0x9e3779b97f4a7c15ull));
}

static struct addr_count *addr_find_locked(struct http_server *s, const unsigned char a[16],
                                           unsigned alen)
{
    for (struct hash_node *n = hash_first(&s->by_addr, addr_hash(a)); n; n = hash_next(n)) {
        struct addr_count *e = hash_entry(n, struct addr_count, node);
        if (e->alen == alen && memcmp(e->addr, a, 16) == 0)
            return e;
    }
    return NULL;
}

/* Open connections from the address. */
static int addr_open(struct http_server *s, const unsigned char a[16], unsigned alen)
{
    pthread_mutex_lock(&s->addr_mu);
    struct addr_count *e = addr_find_locked(s, a, alen);
    int n = e ? e->n : 0;
    pthread_mutex_unlock(&s->addr_mu);
    return n;
}

static bool addr_add(struct http_server *s, const unsigned char a[16], unsigned alen, int delta)
{
    pthread_mutex_lock(&s->addr_mu);
    struct addr_count *e = addr_find_locked(s, a, alen);
    if (!e && delta > 0 && (e = calloc(1, sizeof(*e))) != NULL) {
        memcpy(e->addr, a, 16);
        e->alen = alen;
        hash_insert(&s->by_addr, &e->node, addr_hash(a));
    }
    if (e) {
        e->n += delta;
        if (e->n <= 0) {
            hash_remove(&s->by_addr, &e->node);
            free(e);
        }
    }
    pthread_mutex_unlock(&s->addr_mu);
    return e != NULL || delta < 0;
}

static void head_unlink(struct http_loop *l, struct conn_ctx *c)
{
    if (c->which < 0)
        return;
    struct head_queue *q = &l->heads[c->which];
    if (c->prev)
        c->prev->next = c->next;
    else
        q->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        q->tail = c->prev;
    c->prev = c->next = NULL;
    c->which = -1;
}

static void head_push(struct http_loop *l, struct conn_ctx *c, int which, int64_t due_us)
{
    head_unlink(l, c);
    struct head_queue *q = &l->heads[which];
    c->which = which;
    c->head_due_us = due_us;
    c->next = NULL;
    c->prev = q->tail;
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
}

/* Closes the connections whose request head is overdue (libmicrohttpd's own timeout
 * restarts with every byte, so a head sent a byte at a time would never end) and
 * returns the milliseconds until the next is due, or -1. The socket is shut down;
 * libmicrohttpd sees the end of it and closes the connection in its next run. */
static int heads_sweep(struct http_loop *l, int64_t now)
{
    int64_t next = -1;
    for (int w = 0; w < HEAD_QUEUES; w++) {
        struct conn_ctx *c;
        while ((c = l->heads[w].head) != NULL && c->head_due_us <= now) {
            head_unlink(l, c);
            if (c->fd >= 0)
                shutdown(c->fd, SHUT_RDWR);
        }
        if (c && (next < 0 || c->head_due_us - now < next))
            next = c->head_due_us - now;
    }
    return next < 0 ? -1 : (int)((next + 999) / 1000);
}

/* libmicrohttpd's connection notification: a connection opens (counted for its address,
 * its first head awaited) or closes. On the loop thread (or at the daemon's stop). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct http_loop *l = cls;
    struct http_server *s = l->srv;
    struct conn_ctx *c = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        c = calloc(1, sizeof(*c));
        if (!c)
            return;
        c->loop = l;
        c->which = -1;
        const union MHD_ConnectionInfo *fi =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        c->fd = fi ? fi->connect_fd : -1;
        const union MHD_ConnectionInfo *ai =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ai && ai->client_addr)
            addr_of(ai->client_addr, c->addr, &c->alen);
        if (s->o.max_per_address > 0 && c->alen)
            c->counted = addr_add(s, c->addr, c->alen, 1);
        head_push(l, c, HEAD_NEW, clock_now_us() + s->header_us);
        *socket_context = c;
        return;
    }
    if (!c)
        return;
    head_unlink(l, c);
    if (c->counted)
        addr_add(s, c->addr, c->alen, -1);
    free(c);
    *socket_context = NULL;
}

static struct conn_ctx *conn_ctx_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

/* The request head is complete: no deadline until the answer is out. */
static void head_done(struct MHD_Connection *conn)
{
    struct conn_ctx *c = conn_ctx_of(conn);
    if (c)
        head_unlink(c->loop, c);
}

/* Where a request's key check stands: decided by the snapshot (or the negative cache)
 * on the loop, or looked up in the database on a handler thread while the connection
 * is suspended, before any of the body is taken. */
enum { AUTH_DONE, AUTH_LOOKUP, AUTH_LOOKED_UP };

/* A zeroed request state, from the loop's spares when it has one. */
static struct reqstate *rs_new(struct http_loop *l)
{
    struct reqstate *rs = l->spare;
    if (!rs)
        return calloc(1, sizeof(*rs));
    l->spare = rs->next_spare;
    l->nspare--;
    memset(rs, 0, sizeof(*rs));
    return rs;
}

/* On the loop's thread (or once the loop has stopped): kept for reuse, up to a bound. */
static void rs_free(struct http_loop *l, struct reqstate *rs)
{
    if (l->nspare >= LOOP_SPARE_MAX) {
        free(rs);
        return;
    }
    rs->next_spare = l->spare;
    l->spare = rs;
    l->nspare++;
}

static size_t no_unescape(void *cls, struct MHD_Connection *c, char *uri)
{
    (void)cls;
    (void)c;
    return strlen(uri);
}

static bool sane_request_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return n >= 1 && n <= 64;
}

/* prefix (8 hex digits) and n in at least 8 lowercase hex digits: what "%s%08llx" gives,
 * without printf's cost on every request. out holds at least 8 + 16 + 1 bytes. */
static void request_id_format(char *out, const char *prefix, uint64_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t len = strlen(prefix);
    memcpy(out, prefix, len);
    int digits = 8;
    while (digits < 16 && (n >> (4 * digits)) != 0)
        digits++;
    for (int i = digits - 1; i >= 0; i--)
        out[len++] = hex[(n >> (4 * i)) & 15];
    out[len] = '\0';
}

static void set_early(struct reqstate *rs, int status, const char *slug, const char *detail)
{
    if (rs->early_status)
        return;
    rs->early_status = status;
    rs->early_slug = slug;
    snprintf(rs->early_detail, sizeof(rs->early_detail), "%s", detail);
}

/* Decodes a query component: %XX and '+' as space; NUL or bad escapes fail. */
static char *decode_query(const char *s)
{
    size_t n = strlen(s);
    char *tmp = malloc(n + 1);
    if (!tmp)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        tmp[i] = s[i] == '+' ? ' ' : s[i];
    char *out = malloc(n + 1);
    if (out && router_decode(tmp, n, out, n + 1) < 0) {
        free(out);
        out = NULL;
    }
    free(tmp);
    return out;
}

static enum MHD_Result collect_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    struct reqstate *rs = cls;
    if (rs->nquery >= HTTP_MAX_QUERY) {
        rs->bad_query = true;
        return MHD_NO;
    }
    char *k = decode_query(key);
    char *v = decode_query(value ? value : "");
    if (!k || !v) {
        free(k);
        free(v);
        rs->bad_query = true;
        return MHD_NO;
    }
    rs->query_keys[rs->nquery] = k;
    rs->query_vals[rs->nquery] = v;
    rs->nquery++;
    return MHD_YES;
}

static bool method_has_body(const char *m)
{
    return strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0;
}

static bool is_json_type(const char *ct)
{
    if (!ct)
        return false;
    while (*ct == ' ')
        ct++;
    size_t n = strlen("application/json");
    return strncasecmp(ct, "application/json", n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* What an auth_check result means for this request: 0 to go on, else the status to
 * answer, with its detail. */
static int auth_verdict(struct reqstate *rs, int rc, char *detail, size_t n)
{
    int need = rs->match.route->scope;
    if (rc == ST_EUNAVAIL) {
        snprintf(detail, n, "the database is unavailable; retry shortly");
        return 503;
    }
    if (rc != ST_OK) {
        snprintf(detail, n, "unknown or revoked API key");
        return 401;
    }
    if ((int)rs->who.scope < need) {
        snprintf(detail, n, "this route needs the %s scope; the key has %s",
                 auth_scope_name((enum auth_scope)need), auth_scope_name(rs->who.scope));
        return 403;
    }
    /* A cookie rides along on any request the browser makes: a write needs proof that
     * the console itself sent it (the session's CSRF token in X-CSRF-Token). */
    if (rs->who.session && !rs->who.csrf_ok && strcmp(rs->method, "GET") != 0 &&
        strcmp(rs->method, "HEAD") != 0) {
        snprintf(detail, n, "a write with a session cookie needs the session's X-CSRF-Token");
        return 403;
    }
    return 0;
}

/* A console session: its cookie and the request's CSRF header as one secret for the
 * verifier; false when the request carries no session cookie. */
static bool session_secret(struct reqstate *rs, struct MHD_Connection *conn)
{
    char id[80];
    const char *cookie = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Cookie");
    if (!http_cookie_value(cookie, AUTH_SESSION_COOKIE, id, sizeof(id)) || !id[0])
        return false;
    const char *csrf = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-CSRF-Token");
    int n = snprintf(rs->session_secret, sizeof(rs->session_secret), "%s%s:%s",
                     AUTH_SESSION_PREFIX, id, csrf && strlen(csrf) <= 80 ? csrf : "");
    return n > 0 && (size_t)n < sizeof(rs->session_secret);
}

/* A key no key can be: too short or long, or with bytes outside printable ASCII. */
static bool key_malformed(const char *k)
{
    size_t n = 0;
    for (; k[n]; n++)
        if ((unsigned char)k[n] <= ' ' || (unsigned char)k[n] >= 0x7f || n > 512)
            return true;
    return n < 16;
}

static void check_auth(struct reqstate *rs, struct MHD_Connection *conn)
{
    const struct route *rt = rs->match.route;
    if (!rt || rt->scope == AUTH_NONE)
        return;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    const char *secret = h && strncasecmp(h, "Bearer ", 7) == 0 && h[7] ? h + 7 : NULL;
    if (!h && session_secret(rs, conn))
        secret = rs->session_secret;
    if (!secret) {
        set_early(rs, 401, NULL, "missing bearer API key");
        return;
    }
    if (secret != rs->session_secret && key_malformed(secret)) {
        set_early(rs, 401, NULL, "unknown or revoked API key");
        return;
    }
    bool miss = false;
    int rc = rs->srv->o.auth->check_cached(rs->srv->o.auth->ctx, secret, &rs->who, &miss);
    if (miss) {
        /* looked up on a handler thread before the body is taken (see on_request) */
        rs->auth_secret = secret;
        rs->auth_stage = AUTH_LOOKUP;
        return;
    }
    char d[128];
    int status = auth_verdict(rs, rc, d, sizeof(d));
    if (status)
        set_early(rs, status, NULL, d);
}

/* The body limit of the request's route, and the 413 detail naming it. */
static size_t body_limit(const struct reqstate *rs)
{
    const struct route *rt = rs->match.route;
    return rt && rt->body_limit ? rt->body_limit : HTTP_BODY_LIMIT;
}

static void too_large(struct reqstate *rs)
{
    char d[96];
    snprintf(d, sizeof(d), "request bodies are limited to %zu MiB", body_limit(rs) >> 20);
    set_early(rs, 413, NULL, d);
}

/* The request line and header fields as they arrived. libmicrohttpd parses them in
 * place, turning each CR and LF into a NUL, and accepts bare LF line ends, folded
 * lines and NULs inside a line (a NUL cuts a value or path short: "Bearer key\0junk"
 * would read as "Bearer key"). So the bytes right after each parsed string tell: after
 * a well-formed line there are two NULs (its CR and LF); after a value cut by a NUL,
 * a bare LF or a fold, the second one is something else. */
struct head_scan {
    bool bad;
    const char *lo, *hi; /* the head as it arrived, when known */
};

static enum MHD_Result scan_head(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    (void)kind;
    (void)key;
    struct head_scan *h = cls;
    if (value) {
        size_t n = strlen(value);
        /* a folded value is joined into memory outside the head */
        if (h->lo && (key < h->lo || key >= h->hi || value < h->lo || value + n > h->hi))
            h->bad = true;
        else if (value[n + 1] != '\0')
            h->bad = true;
    }
    return h->bad ? MHD_NO : MHD_YES;
}

/* The marker the URI log callback leaves in con_cls for a request line cut by a NUL. */
static const char bad_line_mark = 1;

/* libmicrohttpd's URI log callback: sees the request target as it arrived, before the
 * query is split. After it comes the NUL that replaced the space before the version;
 * anything but "HTTP/" after that NUL means the target held a NUL. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)cls;
    (void)c;
    size_t n = strlen(uri);
    return strncmp(uri + n + 1, "HTTP/", 5) == 0 ? NULL : (void *)&bad_line_mark;
}

/* 400 for what RFC 9112 says a server must reject (or may, where accepting would let a
 * proxy in front read the request otherwise): NUL in the line or a field, a bare LF
 * line end, an obsolete folded line; HTTP/1.1 without Host is refused by
 * libmicrohttpd itself (MHD_OPTION_STRICT_FOR_CLIENT). */
static bool check_head(struct reqstate *rs, struct MHD_Connection *conn, const char *method,
                       const char *version, bool bad_line)
{
    size_t n = strlen(version);
    struct head_scan h = {bad_line || n == 0 || version[n + 1] != '\0', NULL, NULL};
    /* the request line starts the head, whose size libmicrohttpd knows */
    const union MHD_ConnectionInfo *hs =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (hs && hs->header_size > 0 && version > method && version < method + hs->header_size) {
        h.lo = method;
        h.hi = method + hs->header_size;
    }
    if (!h.bad)
        MHD_get_connection_values(conn, MHD_HEADER_KIND, scan_head, &h);
    if (h.bad) {
        rs->must_close = true;
        set_early(rs, 400, NULL,
                  "malformed request head: a NUL byte, a bare LF line end or a folded header "
                  "line");
    }
    return !h.bad;
}

/* What the request's framing headers say, every occurrence counted. */
struct framing {
    int ncl, nte;
    bool cl_conflict, cl_bad;
    unsigned long long cl;
    bool te_chunked; /* every Transfer-Encoding is exactly "chunked" */
};

static enum MHD_Result scan_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    struct framing *f = cls;
    if (!value)
        value = "";
    if (strcasecmp(key, "Content-Length") == 0) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(value, &end, 10);
        if (!*value || *value < '0' || *value > '9' || *end || errno)
            f->cl_bad = true;
        if (f->ncl++ && v != f->cl)
            f->cl_conflict = true;
        f->cl = v;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        f->te_chunked = (f->nte++ == 0 || f->te_chunked) && strcasecmp(value, "chunked") == 0;
    }
    return MHD_YES;
}

/* RFC 9112 6.1-6.3: two different lengths, or one that is not a number, are refused;
 * a coding other than chunked is answered 501 (steward decodes chunked only); a request
 * with both a length and a coding is answered, then the connection is closed (a proxy
 * in front may have framed it otherwise). Returns false when the request was refused. */
static bool check_framing(struct reqstate *rs, struct MHD_Connection *conn)
{
    struct framing f = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, scan_framing, &f);
    if (f.cl_conflict || f.cl_bad) {
        rs->must_close = true;
        set_early(rs, 400, NULL, "conflicting or malformed Content-Length");
        return false;
    }
    if (f.nte && !f.te_chunked) {
        rs->must_close = true;
        set_early(rs, 501, NULL, "the only transfer coding served is chunked");
        return false;
    }
    if (f.nte && f.ncl)
        rs->must_close = true;
    return true;
}

static void check_body_headers(struct reqstate *rs, struct MHD_Connection *conn)
{
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
    rs->has_body = (cl && strtoull(cl, NULL, 10) > 0) || te;
    if (!rs->has_body)
        return;
    if (!method_has_body(rs->method)) {
        set_early(rs, 400, NULL, "this method takes no request body");
        return;
    }
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    if (!is_json_type(ct)) {
        set_early(rs, 415, NULL, "request bodies must be application/json");
        return;
    }
    if (cl && strtoull(cl, NULL, 10) > body_limit(rs))
        too_large(rs);
}

static void start_request(struct reqstate *rs, struct MHD_Connection *conn, const char *url,
                          const char *method, const char *version, bool bad_line)
{
    struct http_server *srv = rs->srv;
    rs->start_us = clock_now_us();
    snprintf(rs->method, sizeof(rs->method), "%s", method);
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (rid && sane_request_id(rid))
        snprintf(rs->request_id, sizeof(rs->request_id), "%s", rid);
    else
        request_id_format(rs->request_id, srv->id_prefix,
                          atomic_fetch_add_explicit(&srv->next_id, 1, memory_order_relaxed));
    const char *tp = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "traceparent");
    if (tp && log_traceparent_parse(tp, rs->scope.trace_id, rs->traceparent) != 0) {
        rs->scope.trace_id[0] = '\0';
        rs->traceparent[0] = '\0';
    }
    log_scope_set(&rs->scope); /* on_request restores the loop's own when it returns */

    if (!check_head(rs, conn, method, version, bad_line) || !check_framing(rs, conn))
        return;
    const char *match_method = strcmp(method, "HEAD") == 0 ? "GET" : method;
    router_match(srv->o.router, match_method, url, &rs->match);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, rs);
    if (!rs->match.route) {
        if (rs->match.bad_param)
            set_early(rs, 400, NULL,
                      "a path parameter is badly percent-encoded or longer than 512 bytes");
        else if (rs->match.path_known)
            set_early(rs, 405, NULL, "method not allowed on this resource");
        else
            set_early(rs, 404, NULL, "no such route");
        return;
    }
    /* the key first: a caller without a valid one learns nothing about its request */
    check_auth(rs, conn);
    if (rs->auth_stage == AUTH_LOOKUP)
        return; /* the rest once the key is known (after_lookup) */
    if (rs->bad_query)
        set_early(rs, 400, NULL, "the query string is badly encoded or has too many parameters");
    check_body_headers(rs, conn);
}

/* A response header the handler set, or NULL. */
static const char *header_value(const struct http_resp *resp, const char *name)
{
    for (int i = 0; i < resp->nheaders; i++)
        if (strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

/* True when the If-None-Match list names etag (or is "*"); weak tags compare by value. */
static bool etag_listed(const char *list, const char *etag)
{
    size_t elen = strlen(etag);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == '*')
            return true;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        if (strncmp(p, etag, elen) == 0 && (p[elen] == '\0' || p[elen] == ',' || p[elen] == ' '))
            return true;
        const char *c = strchr(p, ',');
        if (!c)
            break;
        p = c;
    }
    return false;
}

const char *http_req_header(const struct http_req *req, const char *name)
{
    const struct reqstate *rs = req->transport;
    if (!rs || !rs->conn)
        return NULL;
    return MHD_lookup_connection_value(rs->conn, MHD_HEADER_KIND, name);
}

static enum MHD_Result send_response(struct reqstate *rs, struct MHD_Connection *conn,
                                     struct http_resp *resp)
{
    char *text = resp->text;
    size_t len = resp->text_len;
    const char *ctype = resp->content_type;
    if (!text) {
        if (!resp->body)
            resp->body = json_object();
        text = json_text(resp->body, NULL);
        len = text ? strlen(text) : 0;
        if (!ctype)
            ctype = resp->status >= 400 ? "application/problem+json" : "application/json";
    } else if (!ctype) {
        ctype = "application/json";
    }
    resp->text = NULL;
    /* Conditional reads for every GET that waits on the database anyway (the console's
     * refresh): a strong ETag from the body, and 304 when the client already has it.
     * The two loop-run bond routes are left out: they set their own or none. */
    const char *etag = header_value(resp, "ETag");
    if (!etag && resp->status == 200 && text && rs->match.route && !rs->match.route->nonblocking &&
        (strcmp(rs->method, "GET") == 0 || strcmp(rs->method, "HEAD") == 0)) {
        unsigned char d[32];
        char hex[65];
        crypto_sha256(text, len, d);
        crypto_hex(d, 16, hex);
        http_header(resp, "ETag", "\"%s\"", hex);
        etag = header_value(resp, "ETag");
    }
    if (etag && resp->status == 200 &&
        (strcmp(rs->method, "GET") == 0 || strcmp(rs->method, "HEAD") == 0)) {
        const char *inm = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "If-None-Match");
        if (inm && etag_listed(inm, etag))
            resp->status = 304;
    }
    struct MHD_Response *r;
    if (resp->status == 204 || resp->status == 304) {
        free(text);
        r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    } else {
        r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        if (!r)
            free(text);
    }
    if (!r)
        return MHD_NO;
    if (ctype && resp->status != 204 && resp->status != 304)
        MHD_add_response_header(r, "Content-Type", ctype);
    if (rs->must_close)
        MHD_add_response_header(r, "Connection", "close");
    MHD_add_response_header(r, "X-Request-Id", rs->request_id);
    if (rs->traceparent[0])
        MHD_add_response_header(r, "traceparent", rs->traceparent);
    if (!header_value(resp, "Cache-Control"))
        MHD_add_response_header(r, "Cache-Control", "no-store");
    for (int i = 0; i < resp->nheaders; i++)
        MHD_add_response_header(r, resp->headers[i].name, resp->headers[i].value);
    rs->status = resp->status;
    rs->loop->progress = true; /* libmicrohttpd may send it only on its next run */
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)resp->status, r);
    MHD_destroy_response(r);
    return ok;
}

static void resp_release(struct http_resp *resp)
{
    json_decref(resp->body);
    free(resp->text);
}

/* A refusal decided by the server itself (routing, auth, body checks). */
static void refusal(struct reqstate *rs, int status, const char *slug, const char *detail,
                    struct http_resp *resp)
{
    http_problem_slug(resp, status, slug, detail);
    if (status == 405)
        http_header(resp, "Allow", "%s", rs->match.allow);
    if (status == 503)
        http_header(resp, "Retry-After", "1");
    if (status == 401)
        http_header(resp, "WWW-Authenticate", "Bearer");
}

static enum MHD_Result send_early(struct reqstate *rs, struct MHD_Connection *conn)
{
    struct http_resp resp = {0};
    refusal(rs, rs->early_status, rs->early_slug, rs->early_detail, &resp);
    enum MHD_Result ok = send_response(rs, conn, &resp);
    resp_release(&resp);
    return ok;
}

/* Sends a handler's response (500 when it produced none) and releases it. */
static enum MHD_Result answer(struct reqstate *rs, struct MHD_Connection *conn,
                              struct http_resp *resp)
{
    if (resp->status == 0)
        http_problem(resp, 500, "the handler produced no response");
    if (resp->status >= 500 && resp->status != 503) {
        log_msg(rs->srv->o.lg, LOG_ERROR, "request failed", "request_id", rs->request_id, "route",
                rs->match.route->pattern, NULL);
    }
    enum MHD_Result ok = send_response(rs, conn, resp);
    resp_release(resp);
    return ok;
}

struct http_deferred *http_defer(const struct http_req *req, struct http_resp *resp)
{
    struct reqstate *rs = req->transport;
    if (!rs) {
        struct http_deferred *d = calloc(1, sizeof(*d));
        if (d)
            d->resp = resp;
        return d;
    }
    if (rs->on_handler_thread) {
        /* already suspended and counted: the completion finishes the request */
        if (rs->handler_deferred)
            *rs->handler_deferred = true;
        return &rs->defer;
    }
    rs->deferred = true;
    rs->defer.rs = rs;
    rs->defer.resp = &rs->dresp;
    if (rs->srv->park_us == 0) {
        atomic_store_explicit(&rs->dstate, DEFER_PARKED, memory_order_relaxed);
        atomic_fetch_add(&rs->srv->suspended, 1);
        MHD_suspend_connection(rs->conn);
        return &rs->defer;
    }
    atomic_store_explicit(&rs->dstate, DEFER_WAITING, memory_order_relaxed);
    rs->in_wait = true;
    rs->wait_since_us = rs->loop->now_us;
    rs->loop->waiting++;
    return &rs->defer;
}

struct http_resp *http_deferred_resp(struct http_deferred *d)
{
    return d->resp;
}

static void loop_wake(struct http_loop *l)
{
    uint64_t one = 1;
    ssize_t n = write(l->wake_fd, &one, sizeof(one));
    (void)n; /* a full counter already means "wake up" */
}

void http_deferred_finish(struct http_deferred *d)
{
    struct reqstate *rs = d->rs;
    if (!rs) {
        free(d);
        return;
    }
    /* rs may be gone as soon as dstate says DONE: read what is needed first. */
    struct http_server *srv = rs->srv;
    struct http_loop *loop = rs->loop;
    struct MHD_Connection *conn = rs->conn;
    int was = atomic_exchange_explicit(&rs->dstate, DEFER_DONE, memory_order_acq_rel);
    if (was == DEFER_ORPHANED) {
        /* the connection is gone: the answer has nowhere to go */
        resp_release(&rs->dresp);
        free(rs);
        return;
    }
    if (was == DEFER_PARKED) {
        MHD_resume_connection(conn);
        atomic_fetch_sub(&srv->suspended, 1);
    }
    /* From another thread (a handler thread, a database thread) the loop must be woken:
     * libmicrohttpd in external polling mode leaves that to us. On the loop itself the
     * handler is asked again in its next run, with no nap before it. */
    if (!pthread_equal(pthread_self(), loop->self))
        loop_wake(loop);
    else
        loop->progress = true;
}

/* Runs on an HTTP handler thread: the key check the snapshot could not decide, then the
 * handler, whose response resumes the suspended connection. */
static void handler_thread_run(void *arg)
{
    struct reqstate *rs = arg;
    struct http_resp *resp = &rs->dresp;
    /* a copy: rs may be gone once a deferred handler returns, while this thread logs */
    struct log_scope scope = rs->scope;
    const struct log_scope *prev = log_scope_set(&scope);
    json_t *body = rs->body_json; /* ours: rs may be gone once a deferred handler returns */
    rs->body_json = NULL;
    if (rs->auth_secret) {
        char d[128];
        int status = auth_verdict(
            rs, rs->srv->o.auth->check(rs->srv->o.auth->ctx, rs->auth_secret, &rs->who), d,
            sizeof(d));
        if (status) {
            refusal(rs, status, NULL, d, resp);
            json_decref(body);
            http_deferred_finish(&rs->defer);
            log_scope_set(prev);
            return;
        }
    }
    bool deferred = false;
    rs->handler_deferred = &deferred;
    ((http_handler_fn)rs->match.route->handler)(rs->match.route->ctx, &rs->req, resp);
    json_decref(body);
    if (!deferred) {
        rs->handler_deferred = NULL;
        http_deferred_finish(&rs->defer);
    } /* else its completion finishes the request, and rs must not be touched */
    log_scope_set(prev);
}

static enum MHD_Result run_handler(struct reqstate *rs, struct MHD_Connection *conn,
                                   const char *url)
{
    struct http_req *req = &rs->req;
    struct http_resp resp = {0};
    json_t *body = NULL;
    if (rs->has_body && rs->body_len > 0) {
        char err[200];
        body = jv_parse(rs->body, rs->body_len, err, sizeof(err));
        if (!body) {
            char detail[240];
            snprintf(detail, sizeof(detail), "malformed JSON: %s", err);
            http_problem(&resp, 400, detail);
            return answer(rs, conn, &resp);
        }
    }
    req->method = rs->method;
    req->path = url;
    req->route = rs->match.route->pattern;
    req->match = &rs->match;
    req->body = body;
    req->request_id = rs->request_id;
    req->who = &rs->who;
    req->transport = rs;
    rs->conn = conn;
    req->nquery = rs->nquery;
    for (size_t i = 0; i < rs->nquery; i++) {
        req->query[i].key = rs->query_keys[i];
        req->query[i].value = rs->query_vals[i];
    }
    if (rs->auth_secret || !rs->match.route->nonblocking) {
        /* It may wait on the database: suspend, and run it on a handler thread. */
        rs->body_json = body;
        rs->deferred = true;
        rs->on_handler_thread = true;
        rs->defer.rs = rs;
        rs->defer.resp = &rs->dresp;
        atomic_store_explicit(&rs->dstate, DEFER_PARKED, memory_order_relaxed);
        atomic_fetch_add(&rs->srv->suspended, 1);
        MHD_suspend_connection(conn);
        if (workq_submit(rs->srv->handlers, handler_thread_run, rs) != 0) {
            rs->body_json = NULL;
            json_decref(body);
            http_problem(&rs->dresp, 503, "the server is stopping; retry shortly");
            http_header(&rs->dresp, "Retry-After", "1");
            http_deferred_finish(&rs->defer);
        }
        return MHD_YES;
    }
    ((http_handler_fn)rs->match.route->handler)(rs->match.route->ctx, req, &resp);
    json_decref(body);
    req->body = NULL;
    if (rs->deferred) {
        /* Suspended: the response comes when the work finishes and resumes us. */
        resp_release(&resp);
        return MHD_YES;
    }
    return answer(rs, conn, &resp);
}

static void wait_end(struct reqstate *rs)
{
    if (rs->in_wait) {
        rs->in_wait = false;
        rs->loop->waiting--;
    }
}

/* libmicrohttpd asks again about a deferred request: answer it if its work is done,
 * park it if it has waited too long unsuspended. */
static enum MHD_Result deferred_poll(struct reqstate *rs, struct MHD_Connection *conn)
{
    int st = atomic_load_explicit(&rs->dstate, memory_order_acquire);
    if (st == DEFER_WAITING && rs->loop->now_us - rs->wait_since_us >= rs->srv->park_us) {
        wait_end(rs);
        atomic_fetch_add(&rs->srv->suspended, 1);
        if (atomic_compare_exchange_strong_explicit(&rs->dstate, &st, DEFER_PARKED,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            metrics_count(rs->srv->o.metrics, MC_HTTP_PARKED, 1);
            MHD_suspend_connection(conn);
            rs->loop->progress = true;
            return MHD_YES;
        }
        atomic_fetch_sub(&rs->srv->suspended, 1); /* it finished meanwhile: st is DONE */
    }
    if (st != DEFER_DONE)
        return MHD_YES;
    wait_end(rs);
    rs->deferred = false;
    return answer(rs, conn, &rs->dresp);
}

/* On a handler thread: the database decides a key the snapshot did not know, while
 * the request's connection is suspended before its body (see on_request). */
static void lookup_run(void *arg)
{
    struct reqstate *rs = arg;
    char d[128];
    int status = auth_verdict(
        rs, rs->srv->o.auth->check(rs->srv->o.auth->ctx, rs->auth_secret, &rs->who), d, sizeof(d));
    if (status)
        set_early(rs, status, NULL, d);
    rs->auth_secret = NULL;
    rs->auth_stage = AUTH_LOOKED_UP;
    struct http_loop *loop = rs->loop;
    struct MHD_Connection *conn = rs->conn;
    struct http_server *srv = rs->srv;
    MHD_resume_connection(conn);
    atomic_fetch_sub(&srv->suspended, 1);
    loop_wake(loop);
}

/* The first call after the key lookup: the checks start_request left for then. */
static void after_lookup(struct reqstate *rs, struct MHD_Connection *conn)
{
    rs->auth_stage = AUTH_DONE;
    if (rs->early_status)
        return;
    if (rs->bad_query)
        set_early(rs, 400, NULL, "the query string is badly encoded or has too many parameters");
    check_body_headers(rs, conn);
}

static enum MHD_Result on_request_run(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    struct http_loop *loop = cls;
    struct http_server *srv = loop->srv;
    struct reqstate *rs = *con_cls;
    bool bad_line = false;
    if (rs == (void *)&bad_line_mark) {
        rs = NULL;
        bad_line = true;
    }
    if (!rs || !rs->deferred)
        loop->progress = true;
    if (!rs) {
        rs = rs_new(loop);
        if (!rs)
            return MHD_NO;
        rs->srv = srv;
        rs->loop = loop;
        atomic_fetch_add(&srv->inflight, 1);
        rs->counted = true;
        *con_cls = rs;
        head_done(conn);
        start_request(rs, conn, url, method, version ? version : "", bad_line);
        /* A request refused before its body is read is answered now: libmicrohttpd
         * then skips the body, whereas a response queued while upload data is being
         * delivered is never sent (the connection is just closed). */
        if (rs->early_status)
            return send_early(rs, conn);
        if (rs->auth_stage == AUTH_LOOKUP) {
            /* A key the snapshot does not know: nothing of the body is taken until the
             * database has said whether it is one. */
            rs->conn = conn;
            atomic_fetch_add(&srv->suspended, 1);
            MHD_suspend_connection(conn);
            if (workq_submit(srv->handlers, lookup_run, rs) != 0) {
                rs->auth_stage = AUTH_LOOKED_UP;
                set_early(rs, 503, NULL, "the server is stopping; retry shortly");
                MHD_resume_connection(conn);
                atomic_fetch_sub(&srv->suspended, 1);
            }
        }
        return MHD_YES;
    }
    if (rs->auth_stage == AUTH_LOOKUP)
        return MHD_YES; /* not resumed yet */
    if (rs->auth_stage == AUTH_LOOKED_UP) {
        /* resumed, libmicrohttpd asks again about the head: still before the body */
        after_lookup(rs, conn);
        if (rs->early_status)
            return send_early(rs, conn);
        return MHD_YES;
    }
    if (rs->deferred)
        return deferred_poll(rs, conn);
    if (rs->status)
        return MHD_YES; /* already answered: discard whatever still arrives */
    if (rs->early_status) {
        /* decided after the first call: the body is dropped as it arrives (nothing is
         * kept or parsed) and the answer goes out once it is in, the one moment
         * libmicrohttpd takes one */
        if (*upload_data_size) {
            *upload_data_size = 0;
            return MHD_YES;
        }
        return send_early(rs, conn);
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (rs->too_large || rs->body_len + n > body_limit(rs)) {
            /* A chunked body ran past the limit: keep nothing more and answer 413 once it
             * ends (libmicrohttpd cannot send a response in the middle of an upload). */
            rs->too_large = true;
            free(rs->body);
            rs->body = NULL;
            rs->body_len = 0;
            return MHD_YES;
        }
        char *nb = realloc(rs->body, rs->body_len + n + 1);
        if (!nb)
            return MHD_NO;
        rs->body = nb;
        memcpy(rs->body + rs->body_len, upload_data, n);
        rs->body_len += n;
        rs->body[rs->body_len] = '\0';
        return MHD_YES;
    }
    if (rs->too_large) {
        too_large(rs);
        return send_early(rs, conn);
    }
    return run_handler(rs, conn, url);
}

/* Every line logged while libmicrohttpd asks about a request (its handler when it runs on
 * the loop included) carries the request's trace id: the log scope is the request's for
 * the call (start_request sets it for a new one), then the loop's own again. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct reqstate *rs = *con_cls == (void *)&bad_line_mark ? NULL : *con_cls;
    struct log_scope scope;
    if (rs)
        scope = rs->scope;
    const struct log_scope *prev = log_scope_set(rs ? &scope : NULL);
    enum MHD_Result r =
        on_request_run(cls, conn, url, method, version, upload_data, upload_data_size, con_cls);
    log_scope_set(prev);
    return r;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_server *srv = cls;
    struct reqstate *rs = *con_cls;
    if (rs == (void *)&bad_line_mark) {
        *con_cls = NULL; /* refused by libmicrohttpd before it asked us */
        return;
    }
    if (!rs)
        return;
    rs->loop->progress = true; /* the connection reads its next request on the next run */
    int64_t now = clock_now_us();
    int64_t dur = now - rs->start_us;
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        /* kept alive: the next head may come after the idle timeout, then must be quick */
        struct conn_ctx *c = conn_ctx_of(conn);
        if (c)
            head_push(c->loop, c, HEAD_KEPT, now + HTTP_IDLE_S * 1000000ll + srv->header_us);
    }
    int route_index = rs->match.route ? rs->match.route->index : -1;
    int status = rs->status ? rs->status : 499;
    if (srv->o.metrics)
        metrics_http_observe(srv->o.metrics, route_index, status, dur);
    if (srv->o.access_log || status >= 500) {
        struct log_line l;
        enum log_level lvl = status == 503 ? LOG_WARN : status >= 500 ? LOG_ERROR : LOG_INFO;
        const struct log_scope *prev = log_scope_set(&rs->scope);
        log_begin(&l, srv->o.lg, lvl, "request");
        log_scope_set(prev);
        log_str(&l, "request_id", rs->request_id);
        log_str(&l, "method", rs->method);
        log_str(&l, "route", rs->match.route ? rs->match.route->pattern : "unmatched");
        log_int(&l, "status", status);
        log_dbl(&l, "duration_ms", (double)dur / 1000.0);
        if (rs->who.scope != AUTH_NONE)
            log_str(&l, "key", rs->who.name);
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
            log_int(&l, "terminated", (long long)toe);
        log_end(&l);
    }
    for (size_t i = 0; i < rs->nquery; i++) {
        free(rs->query_keys[i]);
        free(rs->query_vals[i]);
    }
    free(rs->body);
    if (rs->counted)
        atomic_fetch_sub(&srv->inflight, 1);
    *con_cls = NULL;
    if (rs->deferred) {
        /* Closed (the client left, a timeout) while its work still runs: that work
         * frees rs when it finishes. */
        wait_end(rs);
        int was = atomic_exchange_explicit(&rs->dstate, DEFER_ORPHANED, memory_order_acq_rel);
        if (was == DEFER_PARKED)
            atomic_fetch_sub(&srv->suspended, 1); /* only a daemon that stops closes one */
        if (was == DEFER_WAITING || was == DEFER_PARKED)
            return;
        resp_release(&rs->dresp);
    }
    rs_free(rs->loop, rs);
}

__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    const struct logger *lg = cls;
    char msg[256];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_msg(lg, LOG_DEBUG, "libmicrohttpd", "detail", msg, NULL);
}

/* Takes one pending connection, if another loop did not take it first. */
static void loop_accept(struct http_loop *l)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    struct http_server *s = l->srv;
    int fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED)
            return;
        /* one line per 10 s at most, with how many failed meanwhile */
        int64_t now = clock_now_us();
        if (l->emfile_log_us == 0 || now - l->emfile_log_us >= 10000000) {
            struct log_line ll;
            log_begin(&ll, s->o.lg, LOG_WARN, "HTTP accept failed");
            log_str(&ll, "error", strerror(e));
            log_int(&ll, "failures_since_last_line", l->emfile_skipped);
            log_end(&ll);
            l->emfile_log_us = now;
            l->emfile_skipped = 0;
        } else {
            l->emfile_skipped++;
        }
        if (e == EMFILE || e == ENFILE)
            usleep(10000); /* out of descriptors: do not spin on the pending connection */
        return;
    }
    if (s->o.max_per_address > 0) {
        unsigned char a[16];
        unsigned alen;
        addr_of((struct sockaddr *)&ss, a, &alen);
        if (alen && addr_open(s, a, alen) >= s->o.max_per_address) {
            close(fd); /* this address holds its share already */
            return;
        }
    }
    /* libmicrohttpd owns (and closes) the socket from here on, even when it refuses it */
    MHD_add_connection(l->daemon, fd, (struct sockaddr *)&ss, sl);
}

static void *loop_main(void *arg)
{
    struct http_loop *l = arg;
    l->self = pthread_self();
    struct http_server *s = l->srv;
    const struct http_loop_guest *g = s->o.guest;
    void *gs = g && g->attach ? g->attach(g->ctx) : NULL;
    for (;;) {
        bool stopping = atomic_load(&s->stopping);
        struct pollfd fds[3 + HTTP_GUEST_FDS] = {
            {.fd = l->epoll_fd, .events = POLLIN},
            {.fd = l->wake_fd, .events = POLLIN},
            {.fd = stopping ? -1 : s->listen_fd, .events = POLLIN}};
        int gto = -1;
        int gn = gs ? g->flush(gs, fds + 3, &gto) : 0;
        if (atomic_load(&s->closing) && !(gs && g->busy(gs)) && l->waiting == 0 &&
            atomic_load(&s->suspended) == 0)
            break;
        int timeout = -1;
        MHD_UNSIGNED_LONG_LONG mt;
        if (MHD_get_timeout(l->daemon, &mt) == MHD_YES)
            timeout = mt > 60000 ? 60000 : (int)mt;
        /* Deferred requests waiting in place keep libmicrohttpd's ready list non-empty,
         * so it asks for no wait at all. Their answers wake us (the lane's socket, or
         * the wake descriptor), so once a run has made no progress the loop naps instead,
         * at most until the oldest must be parked. Work libmicrohttpd does without
         * calling us back (the rest of a large upload or response, a header that filled
         * the read buffer) then waits for the next wake-up, at most park_ms. */
        if (timeout == 0 && l->waiting > 0 && !l->progress)
            timeout = (int)((s->park_us + 999) / 1000);
        if (gto >= 0 && (timeout < 0 || gto < timeout))
            timeout = gto;
        /* a head cut here wakes the poll below: its socket reads as ended */
        int hto = heads_sweep(l, clock_now_us());
        if (hto >= 0 && (timeout < 0 || hto < timeout))
            timeout = hto;
        if (stopping && (timeout < 0 || timeout > 10))
            timeout = 10;
        int n = poll(fds, (nfds_t)(3 + gn), timeout);
        if (n < 0 && errno != EINTR) {
            log_msg(s->o.lg, LOG_ERROR, "HTTP event loop: poll failed", NULL);
            usleep(1000);
        }
        if (n > 0 && fds[1].revents) {
            uint64_t v;
            ssize_t r = read(l->wake_fd, &v, sizeof(v));
            (void)r;
        }
        if (n > 0 && (fds[2].revents & POLLIN))
            loop_accept(l);
        if (gs)
            g->service(gs, fds + 3, n > 0 ? gn : 0);
        l->progress = false;
        l->now_us = clock_now_us();
        MHD_run(l->daemon);
    }
    MHD_run(l->daemon); /* let the last resumed connections be processed */
    if (gs && g->detach)
        g->detach(gs);
    return NULL;
}

/* Binds and listens, the same socket for every loop. Returns the descriptor or -1. */
static int open_listener(const struct http_server_opts *o, char *err, size_t errlen)
{
    struct sockaddr_in6 a6 = {0};
    struct sockaddr_in a4 = {0};
    struct sockaddr *addr;
    socklen_t alen;
    int family;
    if (inet_pton(AF_INET, o->bind, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)o->port);
        addr = (struct sockaddr *)&a4;
        alen = sizeof(a4);
        family = AF_INET;
    } else if (inet_pton(AF_INET6, o->bind, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)o->port);
        addr = (struct sockaddr *)&a6;
        alen = sizeof(a6);
        family = AF_INET6;
    } else {
        snprintf(err, errlen, "STEWARD_BIND: '%s' is not an IPv4 or IPv6 address", o->bind);
        return -1;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0) ||
        bind(fd, addr, alen) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "cannot listen on %s:%d (STEWARD_HTTP_PORT): %s", o->bind, o->port,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static bool loop_init(struct http_server *s, struct http_loop *l, unsigned conn_limit)
{
    l->srv = s;
    l->epoll_fd = -1;
    l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->wake_fd < 0)
        return false;
    unsigned flags =
        MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_NO_LISTEN_SOCKET;
    l->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, l, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, (void *)s->o.lg,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_UNESCAPE_CALLBACK, no_unescape,
        NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_S, MHD_OPTION_CONNECTION_LIMIT,
        conn_limit, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_CONN_MEMORY,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, l, MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL,
        MHD_OPTION_STRICT_FOR_CLIENT, (int)1, MHD_OPTION_END);
    if (!l->daemon)
        return false;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info)
        return false;
    l->epoll_fd = info->epoll_fd;
    return true;
}

/* Frees a loop whose thread is not running. */
static void loop_destroy(struct http_loop *l)
{
    if (l->daemon)
        MHD_stop_daemon(l->daemon); /* completes what is left: spares may grow */
    if (l->wake_fd >= 0)
        close(l->wake_fd);
    while (l->spare) {
        struct reqstate *next = l->spare->next_spare;
        free(l->spare);
        l->spare = next;
    }
}

static void server_free(struct http_server *s)
{
    workq_free(s->handlers); /* after the loops: nothing is queued or suspended any more */
    for (int i = 0; i < s->nloops; i++)
        loop_destroy(&s->loops[i]);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    struct hash_iter it = hash_iter(&s->by_addr);
    for (struct hash_node *h; (h = hash_iter_next(&it)) != NULL;) {
        hash_remove(&s->by_addr, h);
        free(hash_entry(h, struct addr_count, node));
    }
    hash_release(&s->by_addr);
    pthread_mutex_destroy(&s->addr_mu);
    free(s->loops);
    free(s);
}

struct http_server *http_server_start(const struct http_server_opts *o, char *err, size_t errlen)
{
    struct http_server *s = calloc(1, sizeof(*s));
    int n = o->loops > 0 ? o->loops : 1;
    if (s)
        s->loops = calloc((size_t)n, sizeof(*s->loops));
    if (!s || !s->loops) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (hash_init(&s->by_addr, 4096) != 0) {
        free(s->loops);
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->addr_mu, NULL);
    s->o = *o;
    s->park_us = (int64_t)(o->park_ms > 0 ? o->park_ms : 0) * 1000;
    unsigned char rnd[4];
    crypto_random(rnd, sizeof(rnd));
    crypto_hex(rnd, sizeof(rnd), s->id_prefix);
    s->listen_fd = open_listener(o, err, errlen);
    if (s->listen_fd < 0) {
        hash_release(&s->by_addr);
        pthread_mutex_destroy(&s->addr_mu);
        free(s->loops);
        free(s);
        return NULL;
    }
    s->handlers = workq_new(o->threads > 0 ? o->threads : 1);
    if (!s->handlers) {
        snprintf(err, errlen, "cannot start the HTTP handler threads");
        goto fail;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    s->port = o->port;
    if (getsockname(s->listen_fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    s->header_us = (int64_t)(o->header_timeout_s > 0 ? o->header_timeout_s : 10) * 1000000;
    unsigned total = o->max_connections > 0 ? (unsigned)o->max_connections : 16384u;
    unsigned limit = total / (unsigned)n > 0 ? total / (unsigned)n : 1;
    for (int i = 0; i < n; i++) {
        s->nloops++;
        if (!loop_init(s, &s->loops[i], limit)) {
            snprintf(err, errlen, "cannot start HTTP event loop %d", i);
            goto fail;
        }
    }
    for (int i = 0; i < n; i++) {
        if (pthread_create(&s->loops[i].thread, NULL, loop_main, &s->loops[i]) != 0) {
            snprintf(err, errlen, "cannot start HTTP thread %d", i);
            atomic_store(&s->stopping, true);
            atomic_store(&s->closing, true);
            for (int j = 0; j < i; j++) {
                loop_wake(&s->loops[j]);
                pthread_join(s->loops[j].thread, NULL);
            }
            goto fail;
        }
        s->loops[i].running = true;
    }
    return s;
fail:
    server_free(s);
    return NULL;
}

int http_server_port(const struct http_server *s)
{
    return s->port;
}

void http_server_stop(struct http_server *s, int timeout_ms)
{
    if (!s)
        return;
    atomic_store(&s->stopping, true);
    for (int i = 0; i < s->nloops; i++)
        loop_wake(&s->loops[i]);
    for (int waited = 0; atomic_load(&s->inflight) > 0 && waited < timeout_ms; waited += 10)
        usleep(10000);
    /* A suspended connection must be resumed before its daemon stops. Deferred work is
     * bounded (the pool's acquire timeout, statement_timeout), so the loops' wait ends. */
    if (atomic_load(&s->suspended) > 0)
        log_msg(s->o.lg, LOG_WARN, "waiting for deferred requests to finish", NULL);
    atomic_store(&s->closing, true);
    for (int i = 0; i < s->nloops; i++) {
        loop_wake(&s->loops[i]);
        if (s->loops[i].running)
            pthread_join(s->loops[i].thread, NULL);
        s->loops[i].running = false;
    }
    server_free(s);
}
