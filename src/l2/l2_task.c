/* l2_task: per-key split batches (contract in l2_task.h). */
#include "l2/l2_task.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct l2_key *l2_keys_dup(const struct l2_key *keys, size_t n)
{
    size_t strs = 0;
    for (size_t i = 0; i < n; i++)
        strs += keys[i].model_len + keys[i].salt_len + 2;
    struct l2_key *out = malloc(n * sizeof(*out) + strs);
    if (!out)
        return NULL;
    char *p = (char *)(out + n);
    for (size_t i = 0; i < n; i++) {
        out[i] = keys[i];
        memcpy(p, keys[i].model, keys[i].model_len);
        p[keys[i].model_len] = 0;
        out[i].model = p;
        p += keys[i].model_len + 1;
        if (keys[i].salt_len)
            memcpy(p, keys[i].salt, keys[i].salt_len);
        p[keys[i].salt_len] = 0;
        out[i].salt = p;
        p += keys[i].salt_len + 1;
    }
    return out;
}

struct l2_task *l2_task_new(struct l2_adapter *a, enum l2_task_op op, uint64_t id, const struct l2_key *keys,
                            const struct iovec *bufs, size_t n, const struct l2_cb *cb)
{
    struct l2_task *t = calloc(1, sizeof(*t) + n * sizeof(t->items[0]));
    if (!t)
        return NULL;
    t->a = a;
    t->op = op;
    t->id = id;
    t->n = n;
    t->cb = *cb;
    t->keys = l2_keys_dup(keys, n);
    t->ok = calloc(n ? n : 1, 1);
    if (bufs && (t->bufs = malloc(n * sizeof(*bufs))))
        memcpy(t->bufs, bufs, n * sizeof(*bufs));
    if (!t->keys || !t->ok || (bufs && !t->bufs)) {
        free(t->keys);
        free(t->ok);
        free(t->bufs);
        free(t);
        return NULL;
    }
    atomic_init(&t->left, n);
    atomic_init(&t->bytes, 0);
    atomic_init(&t->rc, 0);
    for (size_t i = 0; i < n; i++) {
        t->items[i].task = t;
        t->items[i].i = i;
        t->items[i].link.next = i + 1 < n ? &t->items[i + 1].link : NULL;
    }
    return t;
}

static void task_free(struct l2_task *t)
{
    free(t->keys);
    free(t->ok);
    free(t->bufs);
    free(t);
}

int l2_task_submit(struct l2_pool *p, struct l2_task *t)
{
    int rc = l2_pool_push(p, &t->items[0].link, &t->items[t->n - 1].link, t->n);
    if (rc < 0)
        task_free(t);
    return rc;
}

void l2_task_done(struct l2_task_item *it, bool ok, uint64_t bytes, int err)
{
    struct l2_task *t = it->task;
    t->ok[it->i] = ok;
    if (bytes)
        atomic_fetch_add_explicit(&t->bytes, bytes, memory_order_relaxed);
    if (err < 0) {
        int zero = 0;
        atomic_compare_exchange_strong(&t->rc, &zero, err);
    }
    /* acq_rel: the last one sees every other item's ok[] and bytes */
    if (atomic_fetch_sub_explicit(&t->left, 1, memory_order_acq_rel) != 1)
        return;
    int rc = atomic_load(&t->rc);
    if (t->op == L2_TASK_STORE) {
        for (size_t i = 0; i < t->n && !rc; i++)
            if (!t->ok[i])
                rc = -EIO;
    } else if (rc != -ECANCELED) {
        rc = 0;
    }
    struct l2_result r = { t->id, rc, t->n, t->ok, atomic_load(&t->bytes) };
    t->cb.fn(t->cb.arg, &r);
    task_free(t);
}

void l2_task_cancel(void *ctx, struct l2_pool_item *it)
{
    (void)ctx;
    l2_task_done((struct l2_task_item *)it, false, 0, -ECANCELED);
}
