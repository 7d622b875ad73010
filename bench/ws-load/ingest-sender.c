/* The ingest sender of the fleet step in C (started by fleet.js when bench/run built it):
 * the same open-loop schedule as ws-ingest.js, without a garbage collector or a JIT, so
 * that the sender's own CPU (0.2-0.3 ms per request in Node, a tenth of this machine at
 * 1,000 a second) does not compete with the servers it measures. Commands come as JSON
 * lines on stdin, each answered by a JSON line on stdout with the same id:
 *   {"id":1,"cmd":"ingest","url":"http://127.0.0.1:8080","key":"...","rate":1000,
 *    "prefix":"x-i-","preconnect":8,"items":[{"idx":3,"scout_id":"..."},...]}
 *       posts one relevant item per entry (POST /v1/scouts/{id}/items, X-Request-Id
 *       ing-<idx>, source_msg_ref prefix + idx) at rate per second, never waiting for
 *       answers: a request due while every connection has one in flight waits for the
 *       first to be free, its wait counted in its latency. Replies t0, sent and httpAt
 *       (CLOCK_MONOTONIC in ms, the clock of every other process of the generator),
 *       status (counts by HTTP status, "error" for transport errors), problems,
 *       send_seconds and monitor (how late the schedule sent, p50 / p99 / max, in the
 *       fields ws-ingest.js fills with its event-loop delay).
 *   {"cmd":"exit"}
 * BENCH_INGEST_SOCKETS keep-alive connections (64), opened by the first ingest and kept
 * for the next, each warmed with GET /livez first, as a long-running client holds its
 * connections. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQ_MAX 2048
#define RESP_MAX 8192
#define PROBLEMS_MAX 20

struct conn {
    int fd;
    int k; /* the item whose request is in flight, -1 when idle */
    char out[REQ_MAX];
    size_t olen, osent;
    char in[RESP_MAX];
    size_t ilen;
};

/* Everything the sender owns, passed down. */
struct sender {
    struct sockaddr_in addr;
    char key[256];
    struct conn *c;
    int nc;
    int ep;
    /* the current ingest */
    json_t *items;
    const char *prefix;
    double *sent, *http_at, *late;
    int *backlog; /* items due with no free connection, oldest first */
    size_t bl_head, bl_tail;
    int *idle; /* free connections, a stack */
    int nidle;
    int done;
    json_t *status, *problems;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void problem(struct sender *s, const char *fmt, const char *detail)
{
    if (json_array_size(s->problems) >= PROBLEMS_MAX)
        return;
    char msg[256];
    snprintf(msg, sizeof(msg), fmt, detail);
    json_array_append_new(s->problems, json_string(msg));
}

static void count_status(struct sender *s, const char *key)
{
    json_t *v = json_object_get(s->status, key);
    json_object_set_new(s->status, key, json_integer(v ? json_integer_value(v) + 1 : 1));
}

/* Whether c->in (NUL-terminated) holds a whole answer: its head and as many bytes of
 * body as its Content-Length says (steward sends one with every answer). */
static bool answer_complete(const struct conn *c)
{
    const char *end = strstr(c->in, "\r\n\r\n");
    const char *cl = strcasestr(c->in, "\r\ncontent-length:");
    return end && cl && cl < end &&
           c->ilen >= (size_t)(end + 4 - c->in) + strtoul(cl + 17, NULL, 10);
}

/* A blocking connect, then GET /livez answered, then non-blocking on the epoll set. */
static int conn_open(struct sender *s, struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    c->k = -1;
    c->ilen = c->olen = c->osent = 0;
    int one = 1;
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&s->addr, sizeof(s->addr)) != 0)
        return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    static const char livez[] = "GET /livez HTTP/1.1\r\nHost: bench\r\n\r\n";
    if (write(c->fd, livez, sizeof(livez) - 1) != (ssize_t)(sizeof(livez) - 1))
        return -1;
    for (;;) { /* until the head and its Content-Length of body are in */
        ssize_t r = read(c->fd, c->in + c->ilen, sizeof(c->in) - c->ilen - 1);
        if (r <= 0)
            return -1;
        c->ilen += (size_t)r;
        c->in[c->ilen] = '\0';
        if (answer_complete(c))
            break;
    }
    c->ilen = 0;
    if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) != 0)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    return epoll_ctl(s->ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void conn_close(struct sender *s, struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

/* Writes what is left of the connection's request; EPOLLOUT only while some is. */
static int conn_flush(struct sender *s, struct conn *c)
{
    while (c->osent < c->olen) {
        ssize_t w = write(c->fd, c->out + c->osent, c->olen - c->osent);
        if (w < 0 && errno == EAGAIN)
            break;
        if (w <= 0)
            return -1;
        c->osent += (size_t)w;
    }
    struct epoll_event ev = {.events = EPOLLIN | (c->osent < c->olen ? EPOLLOUT : 0u),
                             .data.ptr = c};
    return epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Puts item k's request on connection c. */
static int conn_send(struct sender *s, struct conn *c, int k)
{
    json_t *it = json_array_get(s->items, (size_t)k);
    long long idx = json_integer_value(json_object_get(it, "idx"));
    const char *scout = json_string_value(json_object_get(it, "scout_id"));
    char body[512];
    int bn = snprintf(body, sizeof(body),
                      "{\"source_msg_ref\":\"%s%lld\",\"verdict\":\"relevant\",\"reason\":"
                      "\"bench\",\"subject\":\"subject %lld\",\"snippet\":\"a short snippet of "
                      "the message body\",\"source_type\":\"email\"}",
                      s->prefix, idx, idx);
    int n = snprintf(c->out, sizeof(c->out),
                     "POST /v1/scouts/%s/items HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer "
                     "%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     "X-Request-Id: ing-%lld\r\n\r\n%s",
                     scout ? scout : "", s->key, bn, idx, body);
    if (bn <= 0 || bn >= (int)sizeof(body) || n <= 0 || n >= (int)sizeof(c->out))
        return -1;
    c->k = k;
    c->olen = (size_t)n;
    c->osent = 0;
    c->ilen = 0;
    return conn_flush(s, c);
}

/* A free connection takes the oldest item waiting, else goes on the idle stack. */
static void conn_free(struct sender *s, struct conn *c)
{
    c->k = -1;
    while (s->bl_head < s->bl_tail) {
        int k = s->backlog[s->bl_head++];
        if (conn_send(s, c, k) == 0)
            return;
        s->http_at[k] = 0;
        count_status(s, "error");
        s->done++;
        problem(s, "%s", "a request could not be written");
        conn_close(s, c);
        if (conn_open(s, c) != 0) {
            conn_close(s, c);
            return;
        }
    }
    s->idle[s->nidle++] = (int)(c - s->c);
}

/* The connection ended: its request in flight, if any, counted as an error; a new
 * connection in its place (an idle one stays on the idle stack, which reopens it when
 * this fails). */
static void conn_fail(struct sender *s, struct conn *c, const char *why)
{
    bool busy = c->k >= 0;
    if (busy) {
        count_status(s, "error");
        s->done++;
        problem(s, "ingest request: %s", why);
    }
    conn_close(s, c);
    if (conn_open(s, c) != 0)
        conn_close(s, c);
    else if (busy)
        conn_free(s, c);
}

/* Item k on a connection from the idle stack. */
static void send_idle(struct sender *s, int k)
{
    struct conn *c = &s->c[s->idle[--s->nidle]];
    if (c->fd < 0 && conn_open(s, c) != 0) {
        conn_close(s, c);
        s->idle[s->nidle++] = (int)(c - s->c);
        count_status(s, "error");
        s->done++;
        problem(s, "%s", "cannot connect");
        return;
    }
    if (conn_send(s, c, k) != 0)
        conn_fail(s, c, "a request could not be written");
}

/* Reads what came; a complete answer frees the connection. */
static void conn_read(struct sender *s, struct conn *c)
{
    for (;;) {
        ssize_t r = read(c->fd, c->in + c->ilen, sizeof(c->in) - c->ilen - 1);
        if (r < 0 && errno == EAGAIN)
            break;
        if (r <= 0) {
            conn_fail(s, c, r == 0 ? "connection closed" : strerror(errno));
            return;
        }
        c->ilen += (size_t)r;
        c->in[c->ilen] = '\0';
        if (c->ilen + 1 >= sizeof(c->in)) {
            conn_fail(s, c, "answer too long");
            return;
        }
    }
    if (!answer_complete(c))
        return;
    if (c->k < 0 || strncmp(c->in, "HTTP/1.1 ", 9) != 0) {
        conn_fail(s, c, "an answer nobody asked for");
        return;
    }
    char code[4] = {c->in[9], c->in[10], c->in[11], '\0'};
    s->http_at[c->k] = now_ms();
    count_status(s, code);
    s->done++;
    conn_free(s, c);
}

static json_t *ms_array(const double *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The ingest command: its reply, or NULL when out of memory. */
static json_t *ingest(struct sender *s, json_t *m)
{
    s->items = json_object_get(m, "items");
    s->prefix = json_string_value(json_object_get(m, "prefix"));
    double rate = json_number_value(json_object_get(m, "rate"));
    int n = (int)json_array_size(s->items);
    if (!s->prefix || rate <= 0)
        return json_pack("{s:s}", "error", "ingest needs prefix and rate");
    if (s->nc == 0) {
        const char *url = json_string_value(json_object_get(m, "url"));
        const char *key = json_string_value(json_object_get(m, "key"));
        const char *hp = url ? strstr(url, "://") : NULL;
        char host[64] = "";
        int port = 0;
        if (!hp || sscanf(hp + 3, "%63[^:]:%d", host, &port) != 2 || !key ||
            strlen(key) >= sizeof(s->key))
            return json_pack("{s:s}", "error", "ingest needs url (http://host:port) and key");
        snprintf(s->key, sizeof(s->key), "%s", key);
        s->addr.sin_family = AF_INET;
        s->addr.sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &s->addr.sin_addr) != 1)
            return json_pack("{s:s}", "error", "ingest: the url's host must be an IPv4 address");
        const char *env = getenv("BENCH_INGEST_SOCKETS");
        int want = env && atoi(env) > 0 ? atoi(env) : 64;
        s->c = calloc((size_t)want, sizeof(*s->c));
        s->idle = calloc((size_t)want, sizeof(*s->idle));
        if (!s->c || !s->idle)
            return NULL;
        for (s->nc = 0; s->nc < want; s->nc++)
            if (conn_open(s, &s->c[s->nc]) != 0) {
                conn_close(s, &s->c[s->nc]);
                return json_pack("{s:s}", "error", "ingest: cannot connect");
            }
    }
    s->sent = calloc((size_t)n + 1, sizeof(double));
    s->http_at = calloc((size_t)n + 1, sizeof(double));
    s->late = calloc((size_t)n + 1, sizeof(double));
    s->backlog = calloc((size_t)n + 1, sizeof(int));
    s->status = json_object();
    s->problems = json_array();
    if (!s->sent || !s->http_at || !s->late || !s->backlog)
        return NULL;
    s->bl_head = s->bl_tail = 0;
    s->done = 0;
    s->nidle = 0;
    for (int i = s->nc - 1; i >= 0; i--)
        if (s->c[i].fd >= 0)
            s->idle[s->nidle++] = i;
    double t0 = now_ms(), deadline = t0 + 30000.0 + n * 1000.0 / rate, send_end = t0;
    int next = 0;
    struct epoll_event evs[64];
    while (s->done < n && now_ms() < deadline) {
        double now = now_ms();
        while (next < n && t0 + next * 1000.0 / rate <= now) {
            int k = next++;
            s->sent[k] = now;
            s->late[k] = now - (t0 + k * 1000.0 / rate);
            if (s->nidle > 0) {
                send_idle(s, k);
            } else {
                s->backlog[s->bl_tail++] = k;
            }
            if (next == n)
                send_end = now_ms();
        }
        int wait = 100;
        if (next < n) {
            double due = t0 + next * 1000.0 / rate - now_ms();
            wait = due <= 0 ? 0 : (int)due + 1;
        }
        int ne = epoll_wait(s->ep, evs, 64, wait);
        for (int i = 0; i < ne; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd < 0)
                continue;
            if ((evs[i].events & EPOLLOUT) && conn_flush(s, c) != 0) {
                conn_fail(s, c, "write failed");
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                conn_read(s, c);
        }
    }
    if (s->done < n)
        problem(s, "%s", "some answers did not come within the time allowed");
    qsort(s->late, (size_t)(next > 0 ? next : 1), sizeof(double), cmp_double);
    double p50 = next ? s->late[next / 2] : 0, p99 = next ? s->late[(int)(next * 0.99)] : 0,
           mx = next ? s->late[next - 1] : 0;
    json_t *r = json_pack("{s:f, s:o, s:o, s:o, s:o, s:f, s:{s:f, s:f, s:f, s:i, s:f, s:f, s:s}}",
                          "t0", t0, "sent", ms_array(s->sent, n), "httpAt", ms_array(s->http_at, n),
                          "status", s->status, "problems", s->problems, "send_seconds",
                          (send_end - t0) / 1000.0, "monitor", "loop_delay_p50_ms", p50,
                          "loop_delay_p99_ms", p99, "loop_delay_max_ms", mx, "gc_count", 0,
                          "gc_total_ms", 0.0, "gc_max_ms", 0.0, "kind", "c");
    s->status = s->problems = NULL;
    free(s->sent);
    free(s->http_at);
    free(s->late);
    free(s->backlog);
    s->sent = s->http_at = s->late = NULL;
    s->backlog = NULL;
    return r;
}

int main(void)
{
    struct sender s = {0};
    s.ep = epoll_create1(0);
    if (s.ep < 0)
        return 1;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, stdin) > 0) {
        json_t *m = json_loads(line, 0, NULL);
        const char *cmd = json_string_value(json_object_get(m, "cmd"));
        if (cmd && strcmp(cmd, "exit") == 0) {
            json_decref(m);
            break;
        }
        json_t *r = cmd && strcmp(cmd, "ingest") == 0
                        ? ingest(&s, m)
                        : json_pack("{s:s}", "error", "unknown command");
        if (!r)
            r = json_pack("{s:s}", "error", "out of memory");
        json_t *out = json_pack("{s:O, s:o}", "id", json_object_get(m, "id"), "reply", r);
        char *text = out ? json_dumps(out, JSON_COMPACT) : NULL;
        if (text) {
            fputs(text, stdout);
            fputc('\n', stdout);
            fflush(stdout);
        }
        free(text);
        json_decref(out);
        json_decref(m);
    }
    free(line);
    for (int i = 0; i < s.nc; i++)
        conn_close(&s, &s.c[i]);
    free(s.c);
    free(s.idle);
    close(s.ep);
    return 0;
}
