#include "steward/workq.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct job {
    struct job *next;
    workq_fn fn;
    void *arg;
};

struct workq {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *head, *tail;
    struct job *uhead, *utail; /* urgent jobs: taken before any other */
    int pending;
    bool stopping;
    int nthreads;
    pthread_t threads[];
};

static void *worker(void *arg)
{
    struct workq *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (!q->head && !q->uhead && !q->stopping)
            pthread_cond_wait(&q->cv, &q->mu);
        struct job *j = q->uhead ? q->uhead : q->head;
        if (!j) {
            pthread_mutex_unlock(&q->mu);
            return NULL;
        }
        if (j == q->uhead) {
            q->uhead = j->next;
            if (!q->uhead)
                q->utail = NULL;
        } else {
            q->head = j->next;
            if (!q->head)
                q->tail = NULL;
        }
        q->pending--;
        pthread_mutex_unlock(&q->mu);
        j->fn(j->arg);
        free(j);
    }
}

struct workq *workq_new(int threads)
{
    struct workq *q = calloc(1, sizeof(*q) + (size_t)threads * sizeof(pthread_t));
    if (!q)
        return NULL;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&q->threads[i], NULL, worker, q) != 0)
            break;
        q->nthreads++;
    }
    if (q->nthreads == 0) {
        workq_free(q);
        return NULL;
    }
    return q;
}

static int submit(struct workq *q, workq_fn fn, void *arg, bool urgent, int max_pending)
{
    struct job *j = malloc(sizeof(*j));
    if (!j)
        return -1;
    j->next = NULL;
    j->fn = fn;
    j->arg = arg;
    pthread_mutex_lock(&q->mu);
    if (q->stopping || (max_pending > 0 && q->pending >= max_pending)) {
        int rc = q->stopping ? -1 : -2;
        pthread_mutex_unlock(&q->mu);
        free(j);
        return rc;
    }
    struct job **head = urgent ? &q->uhead : &q->head;
    struct job **tail = urgent ? &q->utail : &q->tail;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
    q->pending++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

int workq_submit(struct workq *q, workq_fn fn, void *arg)
{
    return submit(q, fn, arg, false, 0);
}

int workq_submit_bounded(struct workq *q, workq_fn fn, void *arg, int max_pending)
{
    return submit(q, fn, arg, false, max_pending);
}

int workq_submit_urgent(struct workq *q, workq_fn fn, void *arg)
{
    return submit(q, fn, arg, true, 0);
}

int workq_pending(struct workq *q)
{
    pthread_mutex_lock(&q->mu);
    int n = q->pending;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void workq_free(struct workq *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    q->stopping = true;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    for (int i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q);
}
