/* l2_pool: bounded queue + named threads (contract in l2_pool.h). */
#include "l2/l2_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

struct l2_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct l2_pool_item *head, *tail; /* guarded by mu */
    size_t queued, max;               /* guarded by mu */
    bool stopping;                    /* guarded by mu */
    void (*run)(void *ctx, struct l2_pool_item *it);
    void *ctx;
    int n;
    pthread_t *th;
    char name[16];
};

struct start {
    struct l2_pool *p;
    int i;
};

static void *worker(void *arg)
{
    struct l2_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        if (!p->head)
            break;
        struct l2_pool_item *it = p->head;
        p->head = it->next;
        if (!p->head)
            p->tail = NULL;
        p->queued--;
        pthread_mutex_unlock(&p->mu);
        it->next = NULL;
        p->run(p->ctx, it);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int l2_pool_start(struct l2_pool **out, const char *name, int nthreads, size_t max_queued,
                  void (*run)(void *ctx, struct l2_pool_item *it), void *ctx)
{
    *out = NULL;
    if (nthreads < 1)
        return -EINVAL;
    struct l2_pool *p = calloc(1, sizeof(*p));
    if (!p || !(p->th = calloc((size_t)nthreads, sizeof(pthread_t)))) {
        free(p);
        return -ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->max = max_queued;
    p->run = run;
    p->ctx = ctx;
    snprintf(p->name, sizeof(p->name), "%s", name);
    for (int i = 0; i < nthreads; i++) {
        int rc = pthread_create(&p->th[i], NULL, worker, p);
        if (rc) {
            p->n = i;
            l2_pool_stop(p, NULL);
            return -rc;
        }
        char tn[24];
        snprintf(tn, sizeof(tn), "%.9s-%d", name, i % 1000);
        tn[15] = 0;
        pthread_setname_np(p->th[i], tn);
        p->n = i + 1;
    }
    *out = p;
    return 0;
}

int l2_pool_push(struct l2_pool *p, struct l2_pool_item *first, struct l2_pool_item *last, size_t n)
{
    pthread_mutex_lock(&p->mu);
    int rc = 0;
    if (p->stopping)
        rc = -ESHUTDOWN;
    else if (p->queued + n > p->max)
        rc = -ENOBUFS;
    if (!rc) {
        last->next = NULL;
        if (p->tail)
            p->tail->next = first;
        else
            p->head = first;
        p->tail = last;
        p->queued += n;
        if (n == 1)
            pthread_cond_signal(&p->cv);
        else
            pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

size_t l2_pool_queued(struct l2_pool *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->queued;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void l2_pool_stop(struct l2_pool *p, void (*cancel)(void *ctx, struct l2_pool_item *it))
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    struct l2_pool_item *it = p->head;
    p->head = p->tail = NULL;
    p->queued = 0;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    while (it) {
        struct l2_pool_item *next = it->next;
        if (cancel)
            cancel(p->ctx, it);
        it = next;
    }
    for (int i = 0; i < p->n; i++)
        pthread_join(p->th[i], NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->th);
    free(p);
}
