#define LOG_MODULE "lmcd.pool"
#include "server/pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/htab.h"
#include "util/log.h"

/*
 * One peer's FIFO inside a queue. It exists while the peer has jobs queued
 * and sits on the queue's ring; a few emptied ones are kept for reuse so a
 * steady request stream does not malloc per job.
 */
struct peerq {
    struct htab_node node; /* key = &key */
    uint64_t key;
    struct pool_job *head, *tail;
    struct peerq *rnext; /* ring of peers with jobs, or the spare list */
};

#define SPARE_MAX 64

struct queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct htab peers;            /* guarded by lock: peerq by key, those with jobs */
    struct peerq *rhead, *rtail;  /* guarded by lock: round-robin order */
    struct peerq *spare;          /* guarded by lock */
    unsigned n_spare;             /* guarded by lock */
    size_t len;                   /* guarded by lock */
    bool closed;                  /* guarded by lock: submit refused */
    bool stopping;                /* guarded by lock: threads exit when drained */
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

static void peer_release_locked(struct queue *q, struct peerq *pq)
{
    htab_remove(&q->peers, &pq->node);
    if (q->n_spare < SPARE_MAX) {
        pq->rnext = q->spare;
        q->spare = pq;
        q->n_spare++;
    } else {
        free(pq);
    }
}

/* The first job of the peer at the ring's head; that peer then goes to the
 * ring's tail (or leaves it when it has nothing more queued). */
static struct pool_job *queue_pop_locked(struct queue *q)
{
    struct peerq *pq = q->rhead;
    if (!pq)
        return NULL;
    struct pool_job *j = pq->head;
    pq->head = j->next_;
    j->next_ = NULL;
    q->len--;
    q->rhead = pq->rnext;
    if (!q->rhead)
        q->rtail = NULL;
    pq->rnext = NULL;
    if (pq->head) {
        if (q->rtail)
            q->rtail->rnext = pq;
        else
            q->rhead = pq;
        q->rtail = pq;
    } else {
        pq->tail = NULL;
        peer_release_locked(q, pq);
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
        while (!q->rhead && !q->stopping)
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
        htab_init(&p->queues[i].peers);
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

/* The peer's FIFO, made (and put on the ring's tail) if it has none. */
static struct peerq *peer_get_locked(struct queue *q, uint64_t key)
{
    struct htab_node *n = htab_find(&q->peers, &key, sizeof(key));
    if (n)
        return htab_entry(n, struct peerq, node);
    struct peerq *pq = q->spare;
    if (pq) {
        q->spare = pq->rnext;
        q->n_spare--;
    } else if (!(pq = malloc(sizeof(*pq)))) {
        return NULL;
    }
    memset(pq, 0, sizeof(*pq));
    pq->key = key;
    pq->node.key = &pq->key;
    pq->node.key_len = sizeof(pq->key);
    if (htab_insert(&q->peers, &pq->node)) {
        free(pq);
        return NULL;
    }
    if (q->rtail)
        q->rtail->rnext = pq;
    else
        q->rhead = pq;
    q->rtail = pq;
    return pq;
}

int pool_submit(struct pool *p, uint64_t peer_key, struct pool_job *job)
{
    struct queue *q = &p->queues[p->affinity ? peer_key % p->nqueues : 0];
    job->next_ = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->closed || q->stopping) {
        pthread_mutex_unlock(&q->lock);
        return -ESHUTDOWN;
    }
    struct peerq *pq = peer_get_locked(q, peer_key);
    if (!pq) {
        pthread_mutex_unlock(&q->lock);
        return -ENOMEM;
    }
    if (pq->tail)
        pq->tail->next_ = job;
    else
        pq->head = job;
    pq->tail = job;
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

void pool_close(struct pool *p)
{
    for (unsigned i = 0; p && i < p->nqueues; i++) {
        pthread_mutex_lock(&p->queues[i].lock);
        p->queues[i].closed = true;
        pthread_mutex_unlock(&p->queues[i].lock);
    }
}

size_t pool_cancel(struct pool *p, void (*cancel)(struct pool_job *job))
{
    size_t n = 0;
    for (unsigned i = 0; p && i < p->nqueues; i++) {
        struct queue *q = &p->queues[i];
        struct pool_job *taken = NULL, **tailp = &taken;
        pthread_mutex_lock(&q->lock);
        q->closed = true;
        struct pool_job *j;
        while ((j = queue_pop_locked(q))) { /* round-robin order, as they would have run */
            *tailp = j;
            tailp = &j->next_;
        }
        pthread_mutex_unlock(&q->lock);
        while (taken) { /* outside the lock: cancel may take its own */
            j = taken;
            taken = j->next_;
            j->next_ = NULL;
            cancel(j);
            n++;
        }
    }
    return n;
}

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
        struct queue *q = &p->queues[i];
        struct peerq *pq;
        while ((pq = q->spare)) {
            q->spare = pq->rnext;
            free(pq);
        }
        htab_free(&q->peers); /* empty: every thread drained its queue */
        pthread_mutex_destroy(&q->lock);
        pthread_cond_destroy(&q->cond);
    }
    free(p->queues);
    free(p->workers);
    free(p);
}
