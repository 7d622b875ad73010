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
        while (!q->head && !q->stopping)
            pthread_cond_wait(&q->cv, &q->mu);
        struct job *j = q->head;
        if (!j) {
            pthread_mutex_unlock(&q->mu);
            return NULL;
        }
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
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

int workq_submit(struct workq *q, workq_fn fn, void *arg)
{
    struct job *j = malloc(sizeof(*j));
    if (!j)
        return -1;
    j->next = NULL;
    j->fn = fn;
    j->arg = arg;
    pthread_mutex_lock(&q->mu);
    if (q->stopping) {
        pthread_mutex_unlock(&q->mu);
        free(j);
        return -1;
    }
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    q->pending++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return 0;
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
