#define LOG_MODULE "lmcd.pool"
#include "server/pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

struct queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct pool_job *head; /* guarded by lock */
    struct pool_job *tail; /* guarded by lock */
    size_t len;            /* guarded by lock */
    bool stopping;         /* guarded by lock */
};

struct worker {
    struct pool *pool;
    struct queue *q;
    pthread_t thread;
    unsigned index;
    bool started;
};

struct pool {
    char name[16];
    unsigned n;
    bool affinity;
    struct queue *queues; /* n in an affinity pool, 1 otherwise */
    unsigned nqueues;
    struct worker *workers;
};

static struct pool_job *queue_pop_locked(struct queue *q)
{
    struct pool_job *j = q->head;
    if (j) {
        q->head = j->next_;
        if (!q->head)
            q->tail = NULL;
        q->len--;
        j->next_ = NULL;
    }
    return j;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char tname[16];
    snprintf(tname, sizeof(tname), "lmcd-%.6s-%u", w->pool->name, w->index);
    pthread_setname_np(pthread_self(), tname);
    struct queue *q = w->q;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        while (!q->head && !q->stopping)
            pthread_cond_wait(&q->cond, &q->lock);
        struct pool_job *j = queue_pop_locked(q);
        pthread_mutex_unlock(&q->lock);
        if (!j)
            return NULL; /* stopping and drained */
        j->fn(j);
    }
}

int pool_create(const char *name, unsigned nthreads, bool affinity, struct pool **out)
{
    int rc = -ENOMEM;
    if (nthreads == 0)
        return -EINVAL;
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->n = nthreads;
    p->affinity = affinity;
    p->nqueues = affinity ? nthreads : 1;
    p->queues = calloc(p->nqueues, sizeof(*p->queues));
    p->workers = calloc(nthreads, sizeof(*p->workers));
    if (!p->queues || !p->workers)
        goto fail;
    for (unsigned i = 0; i < p->nqueues; i++) {
        pthread_mutex_init(&p->queues[i].lock, NULL);
        pthread_cond_init(&p->queues[i].cond, NULL);
    }
    for (unsigned i = 0; i < nthreads; i++) {
        struct worker *w = &p->workers[i];
        w->pool = p;
        w->index = i;
        w->q = &p->queues[affinity ? i : 0];
        int e = pthread_create(&w->thread, NULL, worker_main, w);
        if (e) {
            rc = -e;
            log_error("cannot start %s pool thread %u: %s", name, i, strerror(e));
            goto fail;
        }
        w->started = true;
    }
    *out = p;
    return 0;
fail:
    pool_destroy(p);
    return rc;
}

int pool_submit(struct pool *p, uint64_t affinity_key, struct pool_job *job)
{
    struct queue *q = &p->queues[p->affinity ? affinity_key % p->nqueues : 0];
    job->next_ = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->stopping) {
        pthread_mutex_unlock(&q->lock);
        return -ESHUTDOWN;
    }
    if (q->tail)
        q->tail->next_ = job;
    else
        q->head = job;
    q->tail = job;
    q->len++;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

size_t pool_pending(struct pool *p)
{
    size_t n = 0;
    for (unsigned i = 0; i < p->nqueues; i++) {
        pthread_mutex_lock(&p->queues[i].lock);
        n += p->queues[i].len;
        pthread_mutex_unlock(&p->queues[i].lock);
    }
    return n;
}

unsigned pool_threads(const struct pool *p) { return p->n; }

void pool_destroy(struct pool *p)
{
    if (!p)
        return;
    for (unsigned i = 0; p->queues && i < p->nqueues; i++) {
        pthread_mutex_lock(&p->queues[i].lock);
        p->queues[i].stopping = true;
        pthread_cond_broadcast(&p->queues[i].cond);
        pthread_mutex_unlock(&p->queues[i].lock);
    }
    for (unsigned i = 0; p->workers && i < p->n; i++)
        if (p->workers[i].started)
            pthread_join(p->workers[i].thread, NULL);
    for (unsigned i = 0; p->queues && i < p->nqueues; i++) {
        pthread_mutex_destroy(&p->queues[i].lock);
        pthread_cond_destroy(&p->queues[i].cond);
    }
    free(p->queues);
    free(p->workers);
    free(p);
}
