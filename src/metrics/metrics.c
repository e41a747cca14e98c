/*
 * metrics.c: the shard registry, sums and the Prometheus text renderer.
 * The hot adds are inline in metrics.h.
 */
#include "metrics/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

__thread struct met_shard *metrics_tls_;

/* Registry: every shard ever made; guarded by reg_mu. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct met_shard *reg_head;
static pthread_key_t reg_key;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;
/* L2 adapter names by index; guarded by reg_mu. */
static char *l2_names[MET_MAX_L2];
static bool l2_any;

/* Thread exit: the shard keeps its counts and waits for a new owner. */
static void shard_release(void *p)
{
    struct met_shard *sh = p;
    pthread_mutex_lock(&reg_mu);
    sh->owned = false;
    pthread_mutex_unlock(&reg_mu);
}

static void reg_init(void) { pthread_key_create(&reg_key, shard_release); }

struct met_shard *metrics_attach_(void)
{
    pthread_once(&reg_once, reg_init);
    pthread_mutex_lock(&reg_mu);
    struct met_shard *sh = reg_head;
    while (sh && sh->owned)
        sh = sh->next;
    if (!sh) {
        sh = calloc(1, sizeof(*sh));
        if (sh) {
            sh->next = reg_head;
            reg_head = sh;
        }
    }
    if (sh)
        sh->owned = true;
    pthread_mutex_unlock(&reg_mu);
    if (sh) {
        pthread_setspecific(reg_key, sh);
        metrics_tls_ = sh;
    }
    return sh;
}

/* ------------------------------------------------------------ rows */

static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h;
}

#define LABEL_MAX 128

/* A label copy: printable ASCII kept, other bytes '?', at most LABEL_MAX. */
static char *label_dup(const char *s, size_t n)
{
    if (n > LABEL_MAX)
        n = LABEL_MAX;
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++)
        d[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    d[n] = 0;
    return d;
}

static struct met_row *row_new(const char *m, size_t ml, const char *s, size_t sl, uint64_t hash)
{
    struct met_row *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->hash = hash;
    r->model = label_dup(m, ml);
    r->salt = label_dup(s, sl);
    if (!r->model || !r->salt) {
        free(r->model);
        free(r->salt);
        free(r);
        return NULL;
    }
    return r;
}

static bool row_is(const struct met_row *r, uint64_t hash, const char *m, size_t ml, const char *s, size_t sl)
{
    if (r->hash != hash)
        return false;
    /* the copy may be cut or sanitized: compare what a copy would be */
    size_t cm = ml > LABEL_MAX ? LABEL_MAX : ml, cs = sl > LABEL_MAX ? LABEL_MAX : sl;
    if (strlen(r->model) != cm || strlen(r->salt) != cs)
        return false;
    for (size_t i = 0; i < cm; i++)
        if (r->model[i] != ((m[i] >= 0x20 && m[i] < 0x7f) ? m[i] : '?'))
            return false;
    for (size_t i = 0; i < cs; i++)
        if (r->salt[i] != ((s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?'))
            return false;
    return true;
}

struct met_row *metrics_row(const char *model, size_t ml, const char *salt, size_t sl)
{
    struct met_shard *sh = metrics_shard();
    if (!sh)
        return NULL;
    if (!model)
        model = "", ml = 0;
    if (!salt)
        salt = "", sl = 0;
    uint64_t h = fnv(fnv(0xcbf29ce484222325ULL, model, ml > LABEL_MAX ? LABEL_MAX : ml), salt,
                     sl > LABEL_MAX ? LABEL_MAX : sl);
    size_t n = sh->n_rows; /* only this thread changes it */
    for (size_t i = 0; i < n; i++)
        if (row_is(sh->rows[i], h, model, ml, salt, sl))
            return sh->rows[i];
    if (n == MET_MAX_ROWS) /* full: the last row is "_other" */
        return sh->rows[n - 1];
    struct met_row *r = n == MET_MAX_ROWS - 1 ? row_new("_other", 6, "_other", 6, 0) : row_new(model, ml, salt, sl, h);
    if (!r)
        return n ? sh->rows[n - 1] : NULL;
    sh->rows[n] = r;
    __atomic_store_n(&sh->n_rows, n + 1, __ATOMIC_RELEASE); /* a scrape sees the row whole */
    return r;
}

/* ------------------------------------------------------------ histograms */

static const double bounds_seconds[MET_NBUCKETS] = {
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
    25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0,
};
static const double bounds_gbps[MET_NBUCKETS] = {
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 6, 8, 10, 15, 20, 30, 50, 75, 100, 200,
};

const double *metrics_bounds(enum met_buckets b) { return b == MET_B_GBPS ? bounds_gbps : bounds_seconds; }

static const enum met_buckets hist_bucket_set[MET_HIST_SLOTS] = {
#define MET_X_(sym, n, lab, b, name, help) [MET_H_##sym... MET_H_##sym##_END_] = b,
    MET_HISTS(MET_X_)
#undef MET_X_
};

static void observe(unsigned idx, double v)
{
    struct met_shard *sh = metrics_shard();
    if (!sh || idx >= MET_HIST_SLOTS || !(v >= 0)) /* NaN too */
        return;
    const double *b = metrics_bounds(hist_bucket_set[idx]);
    unsigned i = 0;
    while (i < MET_NBUCKETS && v > b[i])
        i++;
    metrics_bump_(&sh->h[idx][i], 1);
    double sum;
    uint64_t bits = __atomic_load_n(&sh->hsum[idx], __ATOMIC_RELAXED);
    memcpy(&sum, &bits, sizeof(sum));
    sum += v;
    memcpy(&bits, &sum, sizeof(bits));
    __atomic_store_n(&sh->hsum[idx], bits, __ATOMIC_RELAXED);
}

void metrics_observe_ns(unsigned idx, uint64_t ns) { observe(idx, (double)ns / 1e9); }
void metrics_observe(unsigned idx, double v) { observe(idx, v); }

double metrics_quantile(const struct met_hist_sum *h, enum met_buckets set, double q)
{
    if (!h->count)
        return 0;
    const double *b = metrics_bounds(set);
    double rank = q * (double)h->count, seen = 0;
    for (unsigned i = 0; i <= MET_NBUCKETS; i++) {
        double c = (double)h->bucket[i];
        if (seen + c >= rank && c > 0) {
            if (i == MET_NBUCKETS) /* +Inf bucket: the highest finite bound, as Prometheus */
                return b[MET_NBUCKETS - 1];
            double lo = i ? b[i - 1] : 0, hi = b[i];
            return lo + (hi - lo) * ((rank - seen) / c);
        }
        seen += c;
    }
    return b[MET_NBUCKETS - 1];
}

/* ------------------------------------------------------------ L2 names */

void metrics_l2_register(unsigned i, const char *l2_name)
{
    if (i >= MET_MAX_L2)
        return;
    char *d = label_dup(l2_name ? l2_name : "", l2_name ? strlen(l2_name) : 0);
    pthread_mutex_lock(&reg_mu);
    free(l2_names[i]);
    l2_names[i] = d;
    l2_any = true;
    pthread_mutex_unlock(&reg_mu);
}

/* ------------------------------------------------------------ sums */

static uint64_t ld(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

static uint64_t sum_locked(unsigned idx)
{
    uint64_t t = 0;
    for (struct met_shard *sh = reg_head; sh; sh = sh->next)
        t += ld(&sh->c[idx]);
    return t;
}

uint64_t metrics_sum(unsigned idx)
{
    if (idx >= MET_COUNTER_SLOTS)
        return 0;
    pthread_mutex_lock(&reg_mu);
    uint64_t t = sum_locked(idx);
    pthread_mutex_unlock(&reg_mu);
    return t;
}

uint64_t metrics_row_sum(enum met_row_counter c)
{
    uint64_t t = 0;
    pthread_mutex_lock(&reg_mu);
    for (struct met_shard *sh = reg_head; sh; sh = sh->next) {
        size_t n = __atomic_load_n(&sh->n_rows, __ATOMIC_ACQUIRE);
        for (size_t i = 0; i < n; i++)
            t += ld(&sh->rows[i]->v[c]);
    }
    pthread_mutex_unlock(&reg_mu);
    return t;
}

static void hist_sum_locked(unsigned idx, struct met_hist_sum *out)
{
    memset(out, 0, sizeof(*out));
    for (struct met_shard *sh = reg_head; sh; sh = sh->next) {
        for (unsigned b = 0; b <= MET_NBUCKETS; b++) {
            uint64_t v = ld(&sh->h[idx][b]);
            out->bucket[b] += v;
            out->count += v;
        }
        uint64_t bits = ld(&sh->hsum[idx]);
        double d;
        memcpy(&d, &bits, sizeof(d));
        out->sum += d;
    }
}

void metrics_hist_sum(unsigned idx, struct met_hist_sum *out)
{
    memset(out, 0, sizeof(*out));
    if (idx >= MET_HIST_SLOTS)
        return;
    pthread_mutex_lock(&reg_mu);
    hist_sum_locked(idx, out);
    pthread_mutex_unlock(&reg_mu);
}

/* ------------------------------------------------------------ rendering */

void metrics_family(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_label_value(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fputc('\\', out), fputc(*s, out);
        else if (*s == '\n')
            fputs("\\n", out);
        else if ((unsigned char)*s < 0x20 || *s == 0x7f) /* other control bytes: never in a label */
            fputc('?', out);
        else
            fputc(*s, out);
    }
    fputc('"', out);
}

static bool is_l2_family(const char *name) { return !strncmp(name, "lmcache_mp_l2_", 14); }

/* Label text of slot i; false = skip it. Registry lock held. */
static bool slot_label(enum met_label kind, unsigned i, met_label_fn fn, void *ctx, char *buf, size_t cap)
{
    switch (kind) {
    case MET_L_NONE:
        buf[0] = 0;
        return i == 0;
    case MET_L_L2:
    case MET_L_L2_INDEX: {
        if (!l2_names[i])
            return false;
        FILE *f = fmemopen(buf, cap, "w");
        if (!f)
            return false;
        fputs("l2_name=", f);
        metrics_label_value(f, l2_names[i]);
        if (kind == MET_L_L2_INDEX)
            fprintf(f, ",adapter_index=\"%u\"", i);
        fclose(f);
        return true;
    }
    default:
        return fn && fn(ctx, kind, i, buf, cap);
    }
}

static void render_counters(FILE *out, met_label_fn fn, void *ctx)
{
    static const struct {
        unsigned first, n;
        enum met_label kind;
        const char *name, *help;
    } fam[] = {
#define MET_X_(sym, n, lab, name, help) { MET_##sym, n, lab, name, help },
        MET_COUNTERS(MET_X_)
#undef MET_X_
    };
    char lab[512];
    for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        if (is_l2_family(fam[f].name) && !l2_any)
            continue;
        bool head = false;
        for (unsigned i = 0; i < fam[f].n; i++) {
            uint64_t v = sum_locked(fam[f].first + i);
            /* decode errors: dozens of codes, only those seen are shown */
            if ((fam[f].kind == MET_L_ERROR && !v) || !slot_label(fam[f].kind, i, fn, ctx, lab, sizeof(lab)))
                continue;
            if (!head)
                metrics_family(out, fam[f].name, "counter", fam[f].help), head = true;
            fprintf(out, "%s%s%s%s %llu\n", fam[f].name, lab[0] ? "{" : "", lab, lab[0] ? "}" : "",
                    (unsigned long long)v);
        }
    }
}

/* Rows of every shard, merged by their label pair under one family. */
struct row_sum {
    const char *model, *salt;
    uint64_t v;
};

static int row_cmp_(const struct row_sum *a, const struct row_sum *b, int labels)
{
    int c = (labels & MET_MODEL) ? strcmp(a->model, b->model) : 0;
    if (!c && (labels & MET_SALT))
        c = strcmp(a->salt, b->salt);
    return c;
}
static int cmp_ms(const void *a, const void *b) { return row_cmp_(a, b, MET_MODEL | MET_SALT); }
static int cmp_m(const void *a, const void *b) { return row_cmp_(a, b, MET_MODEL); }
static int cmp_s(const void *a, const void *b) { return row_cmp_(a, b, MET_SALT); }

static void render_rows(FILE *out)
{
    static const struct {
        int labels;
        const char *name, *extra, *help;
    } fam[] = {
#define MET_X_(sym, labels, name, extra, help) { labels, name, extra, help },
        MET_ROWS(MET_X_)
#undef MET_X_
    };
    size_t total = 0;
    for (struct met_shard *sh = reg_head; sh; sh = sh->next)
        total += __atomic_load_n(&sh->n_rows, __ATOMIC_ACQUIRE);
    if (!total) /* no labelled event yet: these families are lazy, as LMCache's */
        return;
    struct row_sum *rs = malloc(total * sizeof(*rs));
    if (!rs)
        return;
    for (size_t f = 0; f < MET_ROW_COUNT; f++) {
        if (is_l2_family(fam[f].name) && !l2_any)
            continue;
        size_t n = 0;
        for (struct met_shard *sh = reg_head; sh; sh = sh->next) {
            size_t k = __atomic_load_n(&sh->n_rows, __ATOMIC_ACQUIRE);
            for (size_t i = 0; i < k && n < total; i++)
                rs[n++] = (struct row_sum){ sh->rows[i]->model, sh->rows[i]->salt, ld(&sh->rows[i]->v[f]) };
        }
        int lb = fam[f].labels;
        qsort(rs, n, sizeof(*rs), lb == (MET_MODEL | MET_SALT) ? cmp_ms : lb == MET_MODEL ? cmp_m : cmp_s);
        bool head = false;
        for (size_t i = 0; i < n;) {
            uint64_t v = 0;
            size_t j = i;
            while (j < n && row_cmp_(&rs[i], &rs[j], lb) == 0)
                v += rs[j++].v;
            if (!head)
                metrics_family(out, fam[f].name, "counter", fam[f].help), head = true;
            fprintf(out, "%s{", fam[f].name);
            const char *sep = "";
            if (lb & MET_MODEL) {
                fputs("model_name=", out);
                metrics_label_value(out, rs[i].model);
                sep = ",";
            }
            if (lb & MET_SALT) {
                fprintf(out, "%scache_salt=", sep);
                metrics_label_value(out, rs[i].salt);
                sep = ",";
            }
            if (fam[f].extra[0])
                fprintf(out, "%s%s", sep, fam[f].extra);
            fprintf(out, "} %llu\n", (unsigned long long)v);
            i = j;
        }
    }
    free(rs);
}

static void render_hists(FILE *out, met_label_fn fn, void *ctx)
{
    static const struct {
        unsigned first, n;
        enum met_label kind;
        enum met_buckets set;
        const char *name, *help;
    } fam[] = {
#define MET_X_(sym, n, lab, b, name, help) { MET_H_##sym, n, lab, b, name, help },
        MET_HISTS(MET_X_)
#undef MET_X_
    };
    char lab[512];
    for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        if (is_l2_family(fam[f].name) && !l2_any)
            continue;
        const double *b = metrics_bounds(fam[f].set);
        bool head = false;
        for (unsigned i = 0; i < fam[f].n; i++) {
            struct met_hist_sum h;
            hist_sum_locked(fam[f].first + i, &h);
            /* an operation never seen has no series (LMCache's are lazy too) */
            if ((fam[f].kind == MET_L_OP && !h.count) || !slot_label(fam[f].kind, i, fn, ctx, lab, sizeof(lab)))
                continue;
            if (!head)
                metrics_family(out, fam[f].name, "histogram", fam[f].help), head = true;
            const char *sep = lab[0] ? "," : "";
            uint64_t cum = 0;
            for (unsigned k = 0; k <= MET_NBUCKETS; k++) {
                cum += h.bucket[k];
                if (k < MET_NBUCKETS)
                    fprintf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", fam[f].name, lab, sep, b[k],
                            (unsigned long long)cum);
                else
                    fprintf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", fam[f].name, lab, sep, (unsigned long long)cum);
            }
            fprintf(out, "%s_sum%s%s%s %.9g\n", fam[f].name, lab[0] ? "{" : "", lab, lab[0] ? "}" : "", h.sum);
            fprintf(out, "%s_count%s%s%s %llu\n", fam[f].name, lab[0] ? "{" : "", lab, lab[0] ? "}" : "",
                    (unsigned long long)h.count);
        }
    }
}

void metrics_render(FILE *out, met_label_fn fn, void *ctx)
{
    pthread_mutex_lock(&reg_mu);
    render_counters(out, fn, ctx);
    render_rows(out);
    render_hists(out, fn, ctx);
    pthread_mutex_unlock(&reg_mu);
}
