/* A fixed pool of worker threads running submitted jobs in FIFO order. Used so that
 * database work never runs on the WebSocket event loop. */
#ifndef STEWARD_WORKQ_H
#define STEWARD_WORKQ_H

typedef void (*workq_fn)(void *arg);

struct workq;

struct workq *workq_new(int threads);
/* Queues fn(arg). The job owns arg. Returns 0, or -1 when the queue is stopping or out
 * of memory (the caller still owns arg then). */
int workq_submit(struct workq *q, workq_fn fn, void *arg);
/* workq_submit, but -2 (arg still the caller's) when max_pending jobs already wait:
 * for work a peer can generate at will, so that a flood cannot grow the queue. */
int workq_submit_bounded(struct workq *q, workq_fn fn, void *arg, int max_pending);
/* Queues fn(arg) ahead of every job that is not urgent (urgent ones run in FIFO order
 * among themselves): a device's hello never waits behind other sessions' work. */
int workq_submit_urgent(struct workq *q, workq_fn fn, void *arg);
/* Number of jobs waiting. */
int workq_pending(struct workq *q);
/* Runs the jobs already queued, joins the threads and frees the queue. */
void workq_free(struct workq *q);

#endif
