/* l2 adapters through the ops contract: mock and fs round trips, fs file
 * formats (new and older names, crc32 trailer), corruption, capacity. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "l2/l2.h"
#include "util/crc32.h"

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int rc;
    size_t n;
    uint8_t ok[64];
};

static void on_done(void *arg, const struct l2_result *r)
{
    struct waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->rc = r->rc;
    w->n = r->n;
    for (size_t i = 0; i < r->n && i < 64; i++)
        w->ok[i] = r->ok ? r->ok[i] : r->rc == 0;
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void wait_for(struct waiter *w)
{
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

#define W(w) struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, 0, { 0 } }

static struct l2_key key_n(int i)
{
    struct l2_key k = { "org/model", 9, NULL, 0, 0x01000100, 0, { 0 } };
    k.hash[0] = (uint8_t)i;
    k.hash[31] = 0xab;
    return k;
}

static int store(struct l2_adapter *a, const struct l2_key *k, const void *buf, size_t len)
{
    W(w);
    struct iovec v = { (void *)buf, len };
    struct l2_cb cb = { on_done, &w };
    int rc = l2_submit_store(a, k, &v, 1, &cb, NULL);
    if (rc < 0)
        return rc;
    wait_for(&w);
    return w.rc;
}

static bool lookup(struct l2_adapter *a, const struct l2_key *k)
{
    W(w);
    struct l2_cb cb = { on_done, &w };
    if (l2_submit_lookup(a, k, 1, &cb, NULL) < 0)
        return false;
    wait_for(&w);
    return w.rc == 0 && w.ok[0];
}

static bool load(struct l2_adapter *a, const struct l2_key *k, void *buf, size_t len)
{
    W(w);
    struct iovec v = { buf, len };
    struct l2_cb cb = { on_done, &w };
    if (l2_submit_load(a, k, &v, 1, &cb, NULL) < 0)
        return false;
    wait_for(&w);
    return w.rc == 0 && w.ok[0];
}

static char dir[256];

static void mkdir_tmp(void)
{
    snprintf(dir, sizeof(dir), "/tmp/lmcd_test_l2_%d_XXXXXX", getpid());
    cr_assert(mkdtemp(dir));
}

static void rm_tmp(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

static struct l2_adapter *mk(const char *json)
{
    char err[256] = "";
    json_error_t je;
    json_t *cfg = json_loads(json, 0, &je);
    cr_assert(cfg, "%s", json);
    struct l2_adapter *a = NULL;
    int rc = l2_adapter_create(cfg, 0, &a, err, sizeof(err));
    json_decref(cfg);
    cr_assert_eq(rc, 0, "%s: %s", json, err);
    return a;
}

static struct l2_adapter *mk_fs(const char *extra)
{
    char j[512];
    snprintf(j, sizeof(j), "{\"type\":\"fs\",\"base_path\":\"%s\"%s}", dir, extra);
    return mk(j);
}

static void fill(uint8_t *b, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(i * 31 + (size_t)seed * 7 + (i >> 8));
}

Test(l2, mock_round_trip_and_capacity)
{
    struct l2_adapter *a = mk("{\"type\":\"mock\",\"max_size_gb\":0.0001,\"mock_bandwidth_gb\":100}");
    uint8_t in[4096], out[4096];
    fill(in, sizeof(in), 1);
    struct l2_key k = key_n(1);
    cr_assert(!lookup(a, &k));
    cr_assert_eq(store(a, &k, in, sizeof(in)), 0);
    cr_assert(lookup(a, &k));
    l2_unlock(a, &k, 1);
    cr_assert(load(a, &k, out, sizeof(out)));
    cr_assert_arr_eq(in, out, sizeof(in));
    cr_assert(!load(a, &k, out, sizeof(out) - 1), "wrong size is a miss");
    /* ~107 KB of capacity: the 27th 4 KiB object does not fit */
    int stored = 1;
    for (int i = 2; i < 40; i++) {
        struct l2_key ki = key_n(i);
        stored += store(a, &ki, in, sizeof(in)) == 0;
    }
    cr_assert_eq(stored, 26);
    struct l2_usage u;
    l2_get_usage(a, true, &u);
    cr_assert_eq(u.total_bytes_used, 26 * 4096);
    cr_assert_eq(json_integer_value(json_object_get(u.bytes_by_cache_salt, "")), 26 * 4096);
    json_decref(u.bytes_by_cache_salt);
    cr_assert_eq(l2_delete(a, &k, 1), 1);
    cr_assert(!lookup(a, &k));
    l2_adapter_destroy(a);
}

Test(l2, fs_round_trip_survives_restart)
{
    mkdir_tmp();
    struct l2_adapter *a = mk_fs("");
    uint8_t in[8192], out[8192];
    fill(in, sizeof(in), 2);
    struct l2_key k = key_n(3);
    cr_assert_eq(store(a, &k, in, sizeof(in)), 0);
    l2_adapter_destroy(a);
    /* the file has LMCache's name and raw bytes */
    char name[L2_KEY_NAME_MAX], path[L2_KEY_NAME_MAX + 300];
    l2_key_fs_name(name, sizeof(name), &k);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s", path);
    cr_assert_eq(st.st_size, 8192);
    a = mk_fs("");
    struct l2_usage u;
    l2_get_usage(a, false, &u);
    cr_assert_eq(u.objects, 1, "recovered at start");
    cr_assert(lookup(a, &k));
    l2_unlock(a, &k, 1);
    memset(out, 0, sizeof(out));
    cr_assert(load(a, &k, out, sizeof(out)));
    cr_assert_arr_eq(in, out, sizeof(in));
    struct l2_key_page pg;
    cr_assert_eq(l2_list_keys(a, "org/model", 10, NULL, &pg), 0);
    cr_assert_eq(pg.n, 1);
    cr_assert_null(pg.next_cursor);
    l2_key_page_free(&pg);
    l2_adapter_destroy(a);
    rm_tmp();
}

static void write_raw(const char *name, const void *b, size_t n, const void *tail, size_t tn)
{
    char path[L2_KEY_NAME_MAX + 300];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, b, n), (ssize_t)n);
    if (tn)
        cr_assert_eq(write(fd, tail, tn), (ssize_t)tn);
    close(fd);
}

static bool exists(const char *name)
{
    char path[L2_KEY_NAME_MAX + 300];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

Test(l2, fs_reads_old_names_and_crc_trailers_and_drops_corrupt_files)
{
    mkdir_tmp();
    uint8_t in[4096], out[4096];
    char name[L2_KEY_NAME_MAX];
    struct l2_key k1 = key_n(10), k2 = key_n(11), k3 = key_n(12), k4 = key_n(13);
    k2.salt = "tenant";
    k2.salt_len = 6;
    k3.group = 0; /* older names carry no group */
    /* k1: new name + good trailer; k2: old salted name + good trailer;
     * k3: flipped byte; k4: truncated */
    fill(in, sizeof(in), 4);
    uint32_t c = crc32_update(0, in, sizeof(in));
    uint8_t tr[8] = { 'L', 'C', 'R', 'C', (uint8_t)c, (uint8_t)(c >> 8), (uint8_t)(c >> 16), (uint8_t)(c >> 24) };
    l2_key_fs_name(name, sizeof(name), &k1);
    write_raw(name, in, sizeof(in), tr, 8);
    l2_key_fs_name_old(name, sizeof(name), &k2);
    write_raw(name, in, sizeof(in), tr, 8);
    uint8_t bad[4096];
    memcpy(bad, in, sizeof(bad));
    bad[100] ^= 1;
    l2_key_fs_name_old(name, sizeof(name), &k3);
    write_raw(name, bad, sizeof(bad), tr, 8);
    char n4[L2_KEY_NAME_MAX];
    l2_key_fs_name(n4, sizeof(n4), &k4);
    write_raw(n4, in, 3000, NULL, 0);
    struct l2_adapter *a = mk_fs(",\"checksum\":\"crc32\"");
    struct l2_usage u;
    l2_get_usage(a, false, &u);
    cr_assert_eq(u.objects, 4);
    cr_assert(load(a, &k1, out, sizeof(out)));
    cr_assert_arr_eq(in, out, sizeof(in));
    memset(out, 0, sizeof(out));
    cr_assert(load(a, &k2, out, sizeof(out)), "old salted name");
    cr_assert_arr_eq(in, out, sizeof(in));
    cr_assert(!load(a, &k3, out, sizeof(out)), "crc mismatch is a miss");
    l2_key_fs_name_old(name, sizeof(name), &k3);
    cr_assert(!exists(name), "and the file is deleted");
    cr_assert(!load(a, &k4, out, sizeof(out)), "truncated is a miss");
    cr_assert(!exists(n4));
    cr_assert(!lookup(a, &k3));
    /* lmcd's own store writes the same trailer */
    struct l2_key k5 = key_n(14);
    cr_assert_eq(store(a, &k5, in, sizeof(in)), 0);
    l2_key_fs_name(name, sizeof(name), &k5);
    char path[L2_KEY_NAME_MAX + 300];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "rb");
    cr_assert(fp);
    uint8_t all[4104];
    cr_assert_eq(fread(all, 1, sizeof(all), fp), sizeof(all));
    fclose(fp);
    cr_assert_arr_eq(all + 4096, tr, 8);
    l2_adapter_destroy(a);
    rm_tmp();
}

Test(l2, fs_capacity_refuses_and_delete_frees)
{
    mkdir_tmp();
    /* 16 KiB capacity */
    struct l2_adapter *a = mk_fs(",\"max_capacity_gb\":0.0000152587890625,\"relative_tmp_dir\":\"tmp\"");
    cr_assert_eq(a->capacity_bytes, 16384);
    uint8_t in[4096];
    fill(in, sizeof(in), 5);
    int ok = 0;
    for (int i = 0; i < 6; i++) {
        struct l2_key k = key_n(20 + i);
        ok += store(a, &k, in, sizeof(in)) == 0;
    }
    cr_assert_eq(ok, 4);
    cr_assert_float_eq(l2_usage_fraction(a), 1.0, 1e-9);
    struct l2_key k0 = key_n(20);
    cr_assert(lookup(a, &k0));
    cr_assert_eq(l2_delete(a, &k0, 1), 0, "locked by a lookup: skipped");
    l2_unlock(a, &k0, 1);
    cr_assert_eq(l2_delete(a, &k0, 1), 1);
    cr_assert_float_eq(l2_usage_fraction(a), 0.75, 1e-9);
    /* no temp files left behind */
    char tmpd[300];
    snprintf(tmpd, sizeof(tmpd), "%s/tmp", dir);
    DIR *d = opendir(tmpd);
    cr_assert(d);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    cr_assert_eq(n, 0);
    l2_adapter_destroy(a);
    rm_tmp();
}

Test(l2, create_refuses_bad_json)
{
    const char *bad[] = {
        "{\"type\":\"fs\"}",
        "{\"type\":\"fs\",\"base_path\":\"/tmp/x\",\"relative_tmp_dir\":\"../up\"}",
        "{\"type\":\"fs\",\"base_path\":\"/tmp/x\",\"checksum\":\"md5\"}",
        "{\"type\":\"mock\",\"max_size_gb\":0,\"mock_bandwidth_gb\":1}",
        "{\"type\":\"mock\",\"max_size_gb\":1,\"mock_bandwidth_gb\":1,\"eviction\":{\"eviction_policy\":\"ARC\"}}",
        "{\"type\":\"nope\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *cfg = json_loads(bad[i], 0, NULL);
        struct l2_adapter *a = NULL;
        char err[256] = "";
        cr_assert_eq(l2_adapter_create(cfg, 0, &a, err, sizeof(err)), -EINVAL, "%s", bad[i]);
        cr_assert(err[0]);
        cr_assert_null(a);
        json_decref(cfg);
    }
}

Test(l2, crc32_is_zlibs)
{
    cr_assert_eq(crc32_update(0, "123456789", 9), 0xCBF43926u);
    cr_assert_eq(crc32_update(crc32_update(0, "1234", 4), "56789", 5), 0xCBF43926u);
}
