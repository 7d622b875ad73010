/* The process's one LISTEN connection (see steward/listen.h). */
#include "steward/listen.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "steward/buf.h"
#include "steward/pool.h"

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 2000

struct listener {
    char *url;
    const struct logger *lg;
    struct listen_channel ch[LISTEN_MAX_CHANNELS];
    int nch;
    int wake_pipe[2]; /* a byte written asks the thread to stop */
    pthread_t thr;
    bool started;
};

struct listener *listener_new(const char *url, const struct logger *lg)
{
    struct listener *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->url = strdup(url ? url : "");
    if (!l->url || pipe2(l->wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        free(l->url);
        free(l);
        return NULL;
    }
    l->lg = lg;
    return l;
}

int listener_add(struct listener *l, const struct listen_channel *ch)
{
    if (l->started || l->nch == LISTEN_MAX_CHANNELS || !ch->name || !ch->notify)
        return -1;
    l->ch[l->nch++] = *ch;
    return 0;
}

/* Waits up to ms for the stop signal: true when stopping. */
static bool nap(struct listener *l, int ms)
{
    struct pollfd p = {l->wake_pipe[0], POLLIN, 0};
    return poll(&p, 1, ms) > 0;
}

static bool listen_on(PGconn *c, const char *channel)
{
    char *ident = PQescapeIdentifier(c, channel, strlen(channel));
    if (!ident)
        return false;
    struct buf sql = {0};
    buf_printf(&sql, "LISTEN %s", ident);
    PQfreemem(ident);
    bool ok = !sql.oom && sql.data;
    if (ok) {
        PGresult *r = PQexec(c, sql.data);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
    }
    buf_release(&sql);
    return ok;
}

static PGconn *listen_connect(struct listener *l)
{
    /* the URL's own parameters win; a multi-host URL reaches the writable primary (a
     * standby refuses LISTEN anyway) */
    PGconn *c = pool_connect(l->url, "steward-listen", 3, l->lg);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return NULL;
    }
    for (int i = 0; i < l->nch; i++) {
        if (!listen_on(c, l->ch[i].name)) {
            PQfinish(c);
            return NULL;
        }
    }
    return c;
}

/* Hands every notification one read brought to its channel, then tells each channel
 * that had any. */
static void dispatch(struct listener *l, PGconn *c)
{
    bool got[LISTEN_MAX_CHANNELS] = {false};
    PGnotify *nt;
    while ((nt = PQnotifies(c)) != NULL) {
        for (int i = 0; i < l->nch; i++) {
            if (strcmp(nt->relname, l->ch[i].name) == 0) {
                l->ch[i].notify(l->ch[i].ctx, nt->extra);
                got[i] = true;
                break;
            }
        }
        PQfreemem(nt);
    }
    for (int i = 0; i < l->nch; i++)
        if (got[i] && l->ch[i].drained)
            l->ch[i].drained(l->ch[i].ctx);
}

static void *listen_main(void *arg)
{
    struct listener *l = arg;
    PGconn *c = NULL;
    int backoff_ms = BACKOFF_FIRST_MS;
    bool warned = false, first = true;
    for (;;) {
        if (!c) {
            c = listen_connect(l);
            if (!c) {
                if (!warned)
                    log_msg(l->lg, LOG_WARN, "notification listener cannot connect; retrying",
                            NULL);
                warned = true;
                if (nap(l, backoff_ms))
                    break;
                backoff_ms = backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff_ms * 2;
                continue;
            }
            log_msg(l->lg, warned ? LOG_INFO : LOG_DEBUG, "notification listener connected", NULL);
            warned = false;
            backoff_ms = BACKOFF_FIRST_MS;
            for (int i = 0; i < l->nch; i++)
                if (l->ch[i].connected)
                    l->ch[i].connected(l->ch[i].ctx, first);
            first = false;
        }
        for (int i = 0; i < l->nch; i++)
            if (l->ch[i].tick)
                l->ch[i].tick(l->ch[i].ctx);
        struct pollfd fds[2] = {{PQsocket(c), POLLIN, 0}, {l->wake_pipe[0], POLLIN, 0}};
        int n = poll(fds, 2, 1000);
        if (n < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break;
        if (n <= 0 || !fds[0].revents)
            continue;
        if (!PQconsumeInput(c) || PQstatus(c) != CONNECTION_OK) {
            log_msg(l->lg, LOG_WARN, "notification listener lost its connection", NULL);
            PQfinish(c);
            c = NULL;
            warned = true;
            for (int i = 0; i < l->nch; i++)
                if (l->ch[i].lost)
                    l->ch[i].lost(l->ch[i].ctx);
            continue;
        }
        dispatch(l, c);
    }
    PQfinish(c);
    return NULL;
}

int listener_start(struct listener *l)
{
    if (l->started)
        return 0;
    if (pthread_create(&l->thr, NULL, listen_main, l) != 0)
        return -1;
    l->started = true;
    return 0;
}

void listener_stop(struct listener *l)
{
    if (!l || !l->started)
        return;
    ssize_t w = write(l->wake_pipe[1], "x", 1);
    (void)w;
    pthread_join(l->thr, NULL);
    l->started = false;
}

void listener_free(struct listener *l)
{
    if (!l)
        return;
    listener_stop(l);
    close(l->wake_pipe[0]);
    close(l->wake_pipe[1]);
    free(l->url);
    free(l);
}
