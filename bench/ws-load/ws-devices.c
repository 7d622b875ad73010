/* The device side of the WebSocket load generator (started by ws-load.js): one process
 * holding many authenticated device sockets on one epoll loop, with no garbage collector
 * and no JIT, so that what it measures is steward rather than its own pauses. Commands
 * come as JSON lines on stdin, each answered by a JSON line on stdout with the same id:
 *   {"id":1,"cmd":"connect","concurrency":200}  opens the sockets (device_hello, hello_ok)
 *   {"id":2,"cmd":"phase","prefix":"x-i-"}     resets the counters; proposals must now
 *                                               carry prefix + the device's index
 *   {"id":2,"cmd":"phase","prefix":"x-i-","expect":[3,9]}  the same, but only the
 *                                               devices listed (indices, this process's
 *                                               or not) expect one; a proposal reaching
 *                                               any other device counts as stray
 *   count    the phase's counters so far and how many sockets have hello_ok (ends a
 *            connect still in progress: the orchestrator's way to stop one that ran out
 *            of time)
 *   authed   the indices of the devices whose socket has hello_ok
 *   report   waits (bounded) for the acks, returns per-device arrival times
 *   open     reconnects every device at once (the storm), no limit; "timeout_ms"
 *            bounds the wait for every hello_ok (default 60000); with "retry":true a
 *            device closed before its hello_ok connects again 1-2 s later, as a device
 *            would (counted in the reply: closed_early, retries)
 *   close    closes every socket
 *   exit
 * and {"ev":"delivered"} once every device that expects one holds its proposal (at once
 * when none of this process's devices expects one).
 *
 * usage: ws-devices URL DEVICES_JSON N PROC PROCS
 *   devices idx < N with idx % PROCS == PROC are this process's.
 *
 * The WebSocket client is written out here (RFC 6455, client side: masked frames out,
 * plain frames in, no extensions); every timestamp is CLOCK_MONOTONIC, the clock the
 * Node sender stamps with (process.hrtime). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum dstate { D_IDLE, D_CONNECTING, D_UPGRADE, D_OPEN, D_CLOSING };
enum cmd { C_NONE, C_CONNECT, C_REPORT, C_OPEN, C_CLOSE, C_EXIT };

struct buf {
    char *p;
    size_t len, off, cap;
};

struct dev {
    int idx;
    const char *device_id, *token;
    int fd;
    enum dstate st;
    bool authed;
    int attempts;
    struct buf in, out;
    bool expect;     /* this phase, one proposal is owed to this device */
    char why[64];    /* why the socket ended: the server's close frame, eof, an error */
    double retry_at; /* storm with retries: when to connect again */
    int got;
    double got_at;
};

/* Everything the loop owns, passed down. */
struct gen {
    struct sockaddr_in addr;
    char host[96], path[256];
    json_t *all; /* the devices file: device ids and tokens point into it */
    struct dev *d;
    int n;
    int proc, procs; /* this process's devices are idx % procs == proc */
    int ep;
    char *prefix; /* the phase's: proposals must carry it + the device's index */
    long delivered, acked, wrong, dup, stray;
    long expected; /* devices that expect a proposal this phase */
    json_t *problems;
    struct buf cin; /* stdin, a line at a time */
    /* the command in progress */
    enum cmd cmd;
    json_int_t cmd_id;
    double cmd_deadline;
    int next_connect, in_flight, concurrency, failures, open_fds;
    int *retry, nretry; /* devices whose handshake failed, to try again */
    double last_hello;
    bool open_retry;            /* storm: reconnect a device closed before hello_ok */
    long closed_early, retries; /* storm: closed before hello_ok, connects again */
    json_t *close_codes;        /* storm: how many of those closes for each reason */
    /* loop monitor: how long each batch of events took, in 0.1 ms buckets up to 1 s */
    long hist[10001];
    long batches;
    double batch_max;
    uint64_t rnd;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

__attribute__((format(printf, 2, 3))) static void problem(struct gen *g, const char *fmt, ...)
{
    if (json_array_size(g->problems) > 20)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_array_append_new(g->problems, json_string(msg));
}

static int buf_add(struct buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static void buf_drop(struct buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static void emit(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(s);
    }
    json_decref(j);
}

static void watch(struct gen *g, struct dev *d, bool want_out)
{
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = d};
    epoll_ctl(g->ep, EPOLL_CTL_MOD, d->fd, &ev);
}

/* Writes what is queued; true while the socket is usable. */
static bool flush_out(struct gen *g, struct dev *d)
{
    while (d->out.off < d->out.len) {
        ssize_t w = send(d->fd, d->out.p + d->out.off, d->out.len - d->out.off, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            watch(g, d, true);
            return true;
        }
        if (w <= 0)
            return false;
        d->out.off += (size_t)w;
    }
    d->out.len = d->out.off = 0;
    return true;
}

static uint32_t rnd32(struct gen *g)
{
    g->rnd ^= g->rnd << 13;
    g->rnd ^= g->rnd >> 7;
    g->rnd ^= g->rnd << 17;
    return (uint32_t)g->rnd;
}

/* Queues one masked client frame. */
static int send_frame(struct gen *g, struct dev *d, int opcode, const char *p, size_t n)
{
    unsigned char h[14];
    size_t hl = 2;
    h[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        h[1] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    uint32_t m = rnd32(g);
    memcpy(h + hl, &m, 4);
    unsigned char *mk = h + hl;
    hl += 4;
    if (buf_add(&d->out, h, hl) != 0 || buf_add(&d->out, p, n) != 0)
        return -1;
    unsigned char *q = (unsigned char *)d->out.p + d->out.len - n;
    for (size_t i = 0; i < n; i++)
        q[i] ^= mk[i & 3];
    return 0;
}

static void send_json(struct gen *g, struct dev *d, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (s) {
        send_frame(g, d, 1, s, strlen(s));
        free(s);
    }
}

static void dev_closed(struct gen *g, struct dev *d)
{
    if (d->fd >= 0) {
        epoll_ctl(g->ep, EPOLL_CTL_DEL, d->fd, NULL);
        close(d->fd);
        g->open_fds--;
    }
    bool was_handshaking =
        d->st == D_CONNECTING || d->st == D_UPGRADE || (d->st == D_OPEN && !d->authed);
    d->fd = -1;
    d->st = D_IDLE;
    d->authed = false;
    buf_free(&d->in);
    buf_free(&d->out);
    if (was_handshaking && (g->cmd == C_CONNECT || g->cmd == C_OPEN)) {
        g->in_flight--;
        if (g->cmd == C_OPEN)
            g->closed_early++;
        if (g->cmd == C_CONNECT && d->attempts < 3) {
            g->retry[g->nretry++] = (int)(d - g->d); /* tried again behind the others */
        } else if (g->cmd == C_OPEN && g->open_retry) {
            const char *why = d->why[0] ? d->why : "unknown";
            json_t *c = json_object_get(g->close_codes, why);
            json_object_set_new(g->close_codes, why, json_integer(json_integer_value(c) + 1));
            d->retry_at = now_ms() + 1000 + rnd32(g) % 1000;
            g->retry[g->nretry++] = (int)(d - g->d);
        } else {
            g->failures++;
            problem(g, "device %d: closed (%s) before hello_ok", d->idx,
                    d->why[0] ? d->why : "unknown");
        }
    }
}

static int dev_open(struct gen *g, struct dev *d)
{
    d->attempts++;
    d->why[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&g->addr, sizeof(g->addr)) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    d->fd = fd;
    d->st = D_CONNECTING;
    d->authed = false;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = d};
    if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        close(fd);
        d->fd = -1;
        d->st = D_IDLE;
        return -1;
    }
    g->in_flight++;
    g->open_fds++;
    return 0;
}

static void on_text(struct gen *g, struct dev *d, const char *p, size_t n, double t)
{
    json_error_t err;
    json_t *f = json_loadb(p, n, 0, &err);
    const char *type = f ? json_string_value(json_object_get(f, "type")) : NULL;
    if (!type) {
        problem(g, "device %d: bad frame", d->idx);
    } else if (strcmp(type, "hello_ok") == 0) {
        if (!d->authed) {
            d->authed = true;
            if (t > g->last_hello)
                g->last_hello = t;
            if (g->cmd == C_CONNECT || g->cmd == C_OPEN)
                g->in_flight--;
        }
    } else if (strcmp(type, "scout_proposal") == 0) {
        json_t *pr = json_object_get(f, "proposal");
        const char *id = json_string_value(json_object_get(pr, "id"));
        const char *ref = json_string_value(json_object_get(pr, "source_msg_ref"));
        if (id)
            send_json(g, d,
                      json_pack("{s:s, s:s}", "type", "scout_proposal_ack", "proposal_id", id));
        size_t pl = g->prefix ? strlen(g->prefix) : 0;
        if (!ref || !g->prefix || strncmp(ref, g->prefix, pl) != 0) {
            problem(g, "device %d: unexpected proposal %s", d->idx, ref);
            g->stray++;
        } else if (atoi(ref + pl) != d->idx) {
            problem(g, "device %d: got the proposal %s", d->idx, ref);
            g->wrong++;
        } else if (!d->expect) {
            problem(g, "device %d: its proposal %s was not expected", d->idx, ref);
            g->stray++;
        } else if (++d->got == 1) {
            d->got_at = t;
            if (++g->delivered == g->expected)
                emit(json_pack("{s:s}", "ev", "delivered"));
        } else {
            g->dup++;
        }
    } else if (strcmp(type, "ack_ok") == 0) {
        g->acked++;
    } else if (strcmp(type, "error") == 0) {
        problem(g, "device %d: error frame %.*s", d->idx, (int)n, p);
    }
    json_decref(f);
}

/* Handles every whole frame in d->in; false when the socket is done with. */
static bool on_frames(struct gen *g, struct dev *d, double t)
{
    for (;;) {
        unsigned char *b = (unsigned char *)d->in.p;
        if (d->in.len < 2)
            return true;
        int op = b[0] & 0x0f;
        uint64_t len = b[1] & 0x7f;
        size_t hl = 2;
        if (b[1] & 0x80) {
            problem(g, "device %d: masked frame from the server", d->idx);
            return false;
        }
        if (len == 126) {
            if (d->in.len < 4)
                return true;
            len = (uint64_t)b[2] << 8 | b[3];
            hl = 4;
        } else if (len == 127) {
            if (d->in.len < 10)
                return true;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | b[2 + i];
            hl = 10;
        }
        if (d->in.len - hl < len)
            return true;
        const char *pl = d->in.p + hl;
        if (!(b[0] & 0x80) || op == 0) {
            problem(g, "device %d: fragmented frame", d->idx);
        } else if (op == 1) {
            on_text(g, d, pl, (size_t)len, t);
        } else if (op == 8) {
            snprintf(d->why, sizeof(d->why), "close frame %d",
                     len >= 2 ? ((unsigned char)pl[0] << 8 | (unsigned char)pl[1]) : 1005);
            if (d->st != D_CLOSING)
                send_frame(g, d, 8, pl, len >= 2 ? 2 : 0);
            flush_out(g, d);
            return false;
        } else if (op == 9) {
            send_frame(g, d, 10, pl, (size_t)len);
        }
        buf_drop(&d->in, hl + (size_t)len);
    }
}

static void on_event(struct gen *g, struct dev *d, uint32_t evs, double t)
{
    if (d->st == D_CONNECTING) {
        int e = 0;
        socklen_t el = sizeof(e);
        if (getsockopt(d->fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0 || e != 0) {
            snprintf(d->why, sizeof(d->why), "connect: %s", strerror(e ? e : errno));
            dev_closed(g, d);
            return;
        }
        if (!(evs & EPOLLOUT))
            return;
        char req[1024];
        int n = snprintf(req, sizeof(req),
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: c3Rld2FyZC1iZW5jaC1rZXk=\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n",
                         g->path, g->host);
        buf_add(&d->out, req, (size_t)n);
        d->st = D_UPGRADE;
    }
    if (evs & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        char tmp[16384];
        for (;;) {
            ssize_t r = recv(d->fd, tmp, sizeof(tmp), 0);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (r <= 0) {
                if (r == 0)
                    snprintf(d->why, sizeof(d->why), "eof");
                else
                    snprintf(d->why, sizeof(d->why), "recv: %s", strerror(errno));
                dev_closed(g, d);
                return;
            }
            buf_add(&d->in, tmp, (size_t)r);
            if ((size_t)r < sizeof(tmp))
                break;
        }
        if (d->st == D_UPGRADE) {
            char *end = d->in.len ? memmem(d->in.p, d->in.len, "\r\n\r\n", 4) : NULL;
            if (end) {
                if (d->in.len < 12 || memcmp(d->in.p, "HTTP/1.1 101", 12) != 0) {
                    problem(g, "device %d: upgrade refused", d->idx);
                    snprintf(d->why, sizeof(d->why), "upgrade refused");
                    dev_closed(g, d);
                    return;
                }
                buf_drop(&d->in, (size_t)(end + 4 - d->in.p));
                d->st = D_OPEN;
                send_json(g, d,
                          json_pack("{s:s, s:s, s:s, s:{s:s}}", "type", "device_hello", "device_id",
                                    d->device_id, "token", d->token, "client", "app_version",
                                    "bench"));
            }
        }
        if ((d->st == D_OPEN || d->st == D_CLOSING) && !on_frames(g, d, t)) {
            dev_closed(g, d);
            return;
        }
    }
    if (d->out.len > d->out.off) {
        if (!flush_out(g, d)) {
            snprintf(d->why, sizeof(d->why), "send: %s", strerror(errno));
            dev_closed(g, d);
            return;
        }
    }
    if (d->out.len == 0 && (evs & EPOLLOUT))
        watch(g, d, false);
}

static void start_close(struct gen *g, struct dev *d)
{
    if (d->fd < 0)
        return;
    if (d->st != D_OPEN) {
        dev_closed(g, d);
        return;
    }
    const unsigned char code[2] = {0x03, 0xe8}; /* 1000 */
    send_frame(g, d, 8, (const char *)code, 2);
    d->st = D_CLOSING;
    if (!flush_out(g, d))
        dev_closed(g, d);
}

static json_t *monitor(struct gen *g)
{
    double p50 = 0, p99 = 0;
    long seen = 0;
    bool half = false;
    for (int i = 0; i <= 10000 && g->batches; i++) {
        seen += g->hist[i];
        if (!half && seen * 2 >= g->batches) {
            p50 = i / 10.0;
            half = true;
        }
        if (seen * 100 >= g->batches * 99) {
            p99 = i / 10.0;
            break;
        }
    }
    return json_pack("{s:f, s:f, s:f, s:i, s:f, s:f}", "loop_delay_p50_ms", p50,
                     "loop_delay_p99_ms", p99, "loop_delay_max_ms", g->batch_max, "gc_count", 0,
                     "gc_total_ms", 0.0, "gc_max_ms", 0.0);
}

static void reply(struct gen *g, json_t *r)
{
    emit(json_pack("{s:I, s:o}", "id", g->cmd_id, "reply", r));
    g->cmd = C_NONE;
}

static json_t *take_problems(struct gen *g)
{
    json_t *p = g->problems;
    g->problems = json_array();
    return p;
}

/* Frees what the loop owns and exits: every socket is closed by now. */
static void gen_exit(struct gen *g, int code)
{
    for (int i = 0; i < g->n; i++) {
        if (g->d[i].fd >= 0)
            close(g->d[i].fd);
        buf_free(&g->d[i].in);
        buf_free(&g->d[i].out);
    }
    free(g->d);
    free(g->retry);
    free(g->prefix);
    buf_free(&g->cin);
    json_decref(g->problems);
    json_decref(g->close_codes);
    json_decref(g->all);
    close(g->ep);
    exit(code);
}

/* Finishes the command in progress when it is done. */
static void progress(struct gen *g, double t)
{
    switch (g->cmd) {
    case C_CONNECT:
        while (g->in_flight < g->concurrency) {
            struct dev *d;
            if (g->nretry > 0)
                d = &g->d[g->retry[--g->nretry]];
            else if (g->next_connect < g->n)
                d = &g->d[g->next_connect++];
            else
                break;
            if (dev_open(g, d) != 0) {
                if (d->attempts < 3) {
                    g->retry[g->nretry++] = (int)(d - g->d);
                } else {
                    g->failures++;
                    problem(g, "device %d: cannot connect", d->idx);
                }
            }
        }
        if (g->in_flight == 0 && g->nretry == 0 && g->next_connect >= g->n) {
            long authed = 0;
            for (int i = 0; i < g->n; i++)
                authed += g->d[i].authed;
            reply(g, json_pack("{s:i, s:I}", "failures", g->failures, "authenticated",
                               (json_int_t)authed));
        }
        break;
    case C_OPEN:
        for (int k = 0; k < g->nretry;) {
            struct dev *d = &g->d[g->retry[k]];
            if (d->retry_at > t) {
                k++;
                continue;
            }
            g->retry[k] = g->retry[--g->nretry];
            g->retries++;
            if (dev_open(g, d) != 0) {
                d->retry_at = t + 1000;
                g->retry[g->nretry++] = (int)(d - g->d);
            }
        }
        if ((g->in_flight == 0 && g->nretry == 0) || t > g->cmd_deadline) {
            /* at the deadline, whatever has no hello_ok yet has failed */
            g->failures += g->in_flight + g->nretry;
            long authed = 0;
            for (int i = 0; i < g->n; i++)
                authed += g->d[i].authed;
            reply(g, json_pack("{s:i, s:f, s:I, s:I, s:O, s:I}", "failures", g->failures,
                               "last_hello_at", g->last_hello, "closed_early",
                               (json_int_t)g->closed_early, "retries", (json_int_t)g->retries,
                               "close_codes", g->close_codes, "authed", (json_int_t)authed));
        }
        break;
    case C_CLOSE:
    case C_EXIT: {
        /* a socket the server has not closed 2 s after our close frame is dropped */
        if (g->open_fds > 0 && t > g->cmd_deadline)
            for (int i = 0; i < g->n; i++)
                if (g->d[i].fd >= 0)
                    dev_closed(g, &g->d[i]);
        if (g->open_fds == 0) {
            if (g->cmd == C_EXIT)
                gen_exit(g, 0);
            reply(g, json_object());
        }
        break;
    }
    case C_REPORT:
        if (g->acked >= g->delivered || t > g->cmd_deadline) {
            json_t *idx = json_array(), *got = json_array(), *at = json_array();
            for (int i = 0; i < g->n; i++) {
                json_array_append_new(idx, json_integer(g->d[i].idx));
                json_array_append_new(got, json_integer(g->d[i].got));
                json_array_append_new(at, json_real(g->d[i].got_at));
            }
            reply(g, json_pack("{s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:o, s:o}", "idx", idx,
                               "got", got, "gotAt", at, "delivered", (json_int_t)g->delivered,
                               "wrong", (json_int_t)g->wrong, "dup", (json_int_t)g->dup, "stray",
                               (json_int_t)g->stray, "acked", (json_int_t)g->acked, "problems",
                               take_problems(g), "monitor", monitor(g)));
        }
        break;
    case C_NONE:
        break;
    }
}

static void on_command(struct gen *g, const char *line, size_t n, double t)
{
    json_error_t err;
    json_t *m = json_loadb(line, n, 0, &err);
    const char *cmd = m ? json_string_value(json_object_get(m, "cmd")) : NULL;
    if (!cmd) {
        fprintf(stderr, "ws-devices: bad command line\n");
        json_decref(m);
        gen_exit(g, 2);
    }
    g->cmd_id = json_integer_value(json_object_get(m, "id"));
    if (strcmp(cmd, "connect") == 0) {
        g->cmd = C_CONNECT;
        g->concurrency = (int)json_integer_value(json_object_get(m, "concurrency"));
        if (g->concurrency < 1)
            g->concurrency = 1;
        g->next_connect = 0;
        g->nretry = 0;
        g->in_flight = 0;
        g->failures = 0;
    } else if (strcmp(cmd, "phase") == 0) {
        const char *prefix = json_string_value(json_object_get(m, "prefix"));
        free(g->prefix);
        g->prefix = prefix ? strdup(prefix) : NULL;
        g->delivered = g->acked = g->wrong = g->dup = g->stray = 0;
        json_t *expect = json_object_get(m, "expect");
        for (int i = 0; i < g->n; i++) {
            g->d[i].got = 0;
            g->d[i].got_at = 0;
            g->d[i].expect = !json_is_array(expect);
        }
        if (json_is_array(expect)) {
            /* this process's devices are idx = proc + k * procs, at g->d[k] */
            size_t k;
            json_t *v;
            json_array_foreach(expect, k, v)
            {
                json_int_t idx = json_integer_value(v);
                if (idx >= g->proc && (idx - g->proc) % g->procs == 0 &&
                    (idx - g->proc) / g->procs < g->n)
                    g->d[(idx - g->proc) / g->procs].expect = true;
            }
        }
        g->expected = 0;
        for (int i = 0; i < g->n; i++)
            g->expected += g->d[i].expect;
        memset(g->hist, 0, sizeof(g->hist));
        g->batches = 0;
        g->batch_max = 0;
        if (g->expected == 0)
            emit(json_pack("{s:s}", "ev", "delivered"));
        reply(g, json_pack("{s:I}", "expected", (json_int_t)g->expected));
    } else if (strcmp(cmd, "count") == 0) {
        long authed = 0;
        for (int i = 0; i < g->n; i++)
            authed += g->d[i].authed;
        reply(g, json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "delivered",
                           (json_int_t)g->delivered, "acked", (json_int_t)g->acked, "wrong",
                           (json_int_t)g->wrong, "dup", (json_int_t)g->dup, "stray",
                           (json_int_t)g->stray, "authed", (json_int_t)authed, "problems",
                           take_problems(g)));
    } else if (strcmp(cmd, "authed") == 0) {
        json_t *idx = json_array();
        for (int i = 0; i < g->n; i++)
            if (g->d[i].authed)
                json_array_append_new(idx, json_integer(g->d[i].idx));
        reply(g, json_pack("{s:o}", "idx", idx));
    } else if (strcmp(cmd, "report") == 0) {
        g->cmd = C_REPORT;
        g->cmd_deadline = t + 10000;
    } else if (strcmp(cmd, "open") == 0) {
        g->cmd = C_OPEN;
        json_int_t tmo = json_integer_value(json_object_get(m, "timeout_ms"));
        g->cmd_deadline = t + (tmo > 0 ? (double)tmo : 60000);
        g->in_flight = 0;
        g->failures = 0;
        g->last_hello = 0;
        g->open_retry = json_is_true(json_object_get(m, "retry"));
        g->nretry = 0;
        g->closed_early = g->retries = 0;
        json_object_clear(g->close_codes);
        for (int i = 0; i < g->n; i++) {
            g->d[i].attempts = 0;
            if (g->d[i].fd < 0 && dev_open(g, &g->d[i]) != 0) {
                g->failures++;
                problem(g, "storm device %d: cannot connect", g->d[i].idx);
            }
        }
    } else if (strcmp(cmd, "close") == 0 || strcmp(cmd, "exit") == 0) {
        g->cmd = strcmp(cmd, "close") == 0 ? C_CLOSE : C_EXIT;
        g->cmd_deadline = t + 2000;
        for (int i = 0; i < g->n; i++)
            start_close(g, &g->d[i]);
    } else {
        reply(g, json_pack("{s:s}", "error", "unknown command"));
    }
    json_decref(m);
    progress(g, t);
}

static void on_stdin(struct gen *g, double t)
{
    char tmp[65536];
    ssize_t r = read(0, tmp, sizeof(tmp));
    if (r == 0)
        gen_exit(g, 0); /* the orchestrator is gone */
    if (r < 0)
        return;
    buf_add(&g->cin, tmp, (size_t)r);
    char *nl;
    while (g->cin.len && (nl = memchr(g->cin.p, '\n', g->cin.len)) != NULL) {
        size_t n = (size_t)(nl - g->cin.p);
        on_command(g, g->cin.p, n, t);
        buf_drop(&g->cin, n + 1);
    }
}

static int parse_url(struct gen *g, const char *url)
{
    int port = 0;
    char host[64];
    if (sscanf(url, "ws://%63[^:/]:%d", host, &port) != 2)
        return -1;
    const char *p = strchr(url + 5, '/');
    snprintf(g->path, sizeof(g->path), "%s", p ? p : "/");
    snprintf(g->host, sizeof(g->host), "%s:%d", host, port);
    g->addr.sin_family = AF_INET;
    g->addr.sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &g->addr.sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: ws-devices URL DEVICES_JSON N PROC PROCS\n");
        return 2;
    }
    static struct gen g;
    if (parse_url(&g, argv[1]) != 0) {
        fprintf(stderr, "ws-devices: cannot use %s\n", argv[1]);
        return 2;
    }
    json_error_t err;
    json_t *all = g.all = json_load_file(argv[2], 0, &err);
    int n = atoi(argv[3]), proc = atoi(argv[4]), procs = atoi(argv[5]);
    if (!all || !json_is_array(all) || (int)json_array_size(all) < n || procs < 1) {
        fprintf(stderr, "ws-devices: cannot read %s\n", argv[2]);
        return 2;
    }
    g.proc = proc;
    g.procs = procs;
    g.d = calloc((size_t)n / (size_t)procs + 1, sizeof(*g.d));
    g.retry = calloc((size_t)n / (size_t)procs + 1, sizeof(*g.retry));
    if (!g.d || !g.retry) {
        fprintf(stderr, "ws-devices: out of memory\n");
        return 2;
    }
    for (int i = proc; i < n; i += procs) {
        json_t *x = json_array_get(all, (size_t)i);
        struct dev *d = &g.d[g.n++];
        d->idx = i;
        d->device_id = json_string_value(json_object_get(x, "device_id"));
        d->token = json_string_value(json_object_get(x, "token"));
        d->fd = -1;
    }
    g.problems = json_array();
    g.close_codes = json_object();
    g.rnd = (uint64_t)now_ms() * 2654435761u + (uint64_t)getpid();
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(g.ep, EPOLL_CTL_ADD, 0, &sev);
    struct epoll_event evs[256];
    for (;;) {
        int k = epoll_wait(g.ep, evs, 256, g.cmd == C_NONE ? 1000 : 20);
        double t = now_ms();
        for (int i = 0; i < k; i++) {
            if (evs[i].data.ptr == NULL)
                on_stdin(&g, t);
            else
                on_event(&g, evs[i].data.ptr, evs[i].events, t);
        }
        if (g.cmd != C_NONE)
            progress(&g, now_ms());
        double took = now_ms() - t;
        if (k > 0) {
            int b = (int)(took * 10);
            g.hist[b > 10000 ? 10000 : b]++;
            g.batches++;
            if (took > g.batch_max)
                g.batch_max = took;
        }
    }
}
