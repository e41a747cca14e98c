#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "server/config.h"

static enum config_action load(struct lmcd_config *c, char *errbuf, size_t cap, int argc, char **argv)
{
    FILE *err = fmemopen(errbuf, cap, "w");
    FILE *out = fopen("/dev/null", "w");
    enum config_action a = config_load(c, argc, argv, out, err);
    fclose(err);
    fclose(out);
    return a;
}

#define ARGV(...) ((char *[]){ "lmcd", __VA_ARGS__, NULL })
#define ARGC(...) ((int)(sizeof((char *[]){ "lmcd", __VA_ARGS__ }) / sizeof(char *)))
#define LOAD(c, e, ...) load((c), (e), sizeof(e), ARGC(__VA_ARGS__), ARGV(__VA_ARGS__))

Test(config, defaults_start_without_flags)
{
    struct lmcd_config c;
    char e[256] = { 0 };
    cr_assert_eq(load(&c, e, sizeof(e), 1, (char *[]){ "lmcd", NULL }), CONFIG_RUN, "%s", e);
    cr_assert_eq(c.storage.l1_size_bytes, 1ull << 30);
    cr_assert_str_eq(c.storage.eviction_policy, "LRU");
    cr_assert_eq(c.mp.max_gpu_workers, 1);
    cr_assert_str_eq(c.http.http_host, "127.0.0.1");
    config_free(&c);
}

Test(config, seed_json_shape_and_key_order)
{
    struct lmcd_config c;
    char e[256] = { 0 };
    cr_assert_eq(LOAD(&c, e, "--l1-size-gb", "10", "--eviction-policy", "LRU", "--runtime-plugin-locations",
                      "examples/mp_runtime_plugins/"),
                 CONFIG_RUN, "%s", e);
    char *s = config_to_python_json(&c);
    const char *head = "{\"mp_config\": {\"host\": \"localhost\", \"port\": 5555, \"chunk_size\": 256, "
                       "\"max_workers\": 1, \"max_gpu_workers\": 1, \"max_cpu_workers\": 1, "
                       "\"hash_algorithm\": \"blake3\", \"engine_type\": \"default\"";
    cr_assert(!strncmp(s, head, strlen(head)), "%s", s);
    cr_assert(strstr(s, "\"runtime_plugin_config\": {\"locations\": [\"examples/mp_runtime_plugins/\"], "
                        "\"extra_config\": {}}"),
              "%s", s);
    cr_assert(strstr(s, "\"storage_manager_config\": {\"l1_manager_config\": {\"memory_config\": "
                        "{\"size_in_bytes\": 10737418240, \"use_lazy\": true, \"init_size_in_bytes\": 10737418240, "
                        "\"align_bytes\": 4096}, \"write_ttl_seconds\": 600, \"read_ttl_seconds\": 300}, "
                        "\"eviction_config\": {\"eviction_policy\": \"LRU\", \"trigger_watermark\": 0.8, "
                        "\"eviction_ratio\": 0.2}, \"l2_adapter_config\": {\"adapters\": []}, "
                        "\"store_policy\": \"default\", \"prefetch_policy\": \"default\", "
                        "\"prefetch_max_in_flight\": 8}"),
              "%s", s);
    cr_assert(strstr(s, "\"obs_config\": {\"enabled\": true, \"max_queue_size\": 10000, \"metrics_enabled\": true, "
                        "\"logging_enabled\": true, \"tracing_enabled\": false, \"otlp_endpoint\": null, "
                        "\"prometheus_port\": 9090}, \"http_config\": {\"http_host\": \"127.0.0.1\", "
                        "\"http_port\": 8080, \"http_allow_insecure\": false, \"http_allowed_hosts\": \"\", "
                        "\"http_max_connections\": 256, \"http_timeout_seconds\": 10}}"),
              "%s", s);
    cr_assert_null(strstr(s, "runtime_plugin_extra_config"));
    free(s);
    config_free(&c);
}

Test(config, extra_config_appears_twice_and_last)
{
    struct lmcd_config c;
    char e[256] = { 0 };
    cr_assert_eq(LOAD(&c, e, "--runtime-plugin-config", "{\"plugin.frontend.heartbeat_url\": \"http://x\"}"),
                 CONFIG_RUN, "%s", e);
    char *s = config_to_python_json(&c);
    const char *tail = ", \"runtime_plugin_extra_config\": {\"plugin.frontend.heartbeat_url\": \"http://x\"}}";
    cr_assert(strlen(s) > strlen(tail) && !strcmp(s + strlen(s) - strlen(tail), tail), "%s", s);
    cr_assert(strstr(s, "\"extra_config\": {\"plugin.frontend.heartbeat_url\": \"http://x\"}"), "%s", s);
    free(s);
    config_free(&c);
}

static void expect_usage(const char *want, int argc, char **argv)
{
    struct lmcd_config c;
    char e[512] = { 0 };
    cr_assert_eq(load(&c, e, sizeof(e), argc, argv), CONFIG_EXIT_USAGE, "accepted %s", argv[1]);
    cr_assert(strstr(e, want), "error line %s lacks %s", e, want);
    cr_assert_eq(strchr(e, '\n'), e + strlen(e) - 1, "one line: %s", e);
}

Test(config, bad_values_give_one_clear_line)
{
    expect_usage("argument --l1-size-gb: invalid float value: 'abc'", ARGC("--l1-size-gb", "abc"), ARGV("--l1-size-gb", "abc"));
    expect_usage("argument --l1-size-gb", ARGC("--l1-size-gb", "-3"), ARGV("--l1-size-gb", "-3"));
    expect_usage("invalid choice: 'FIFO'", ARGC("--eviction-policy", "FIFO"), ARGV("--eviction-policy", "FIFO"));
    expect_usage("--eviction-trigger-watermark", ARGC("--eviction-trigger-watermark", "1.5"),
                 ARGV("--eviction-trigger-watermark", "1.5"));
    expect_usage("argument --port", ARGC("--port", "70000"), ARGV("--port", "70000"));
    expect_usage("--runtime-plugin-config is not valid JSON", ARGC("--runtime-plugin-config", "{x"),
                 ARGV("--runtime-plugin-config", "{x"));
    expect_usage("Invalid JSON for --l2-adapter #0", ARGC("--l2-adapter", "nope"), ARGV("--l2-adapter", "nope"));
    expect_usage("--l2-adapter #0: expected a JSON object, got list", ARGC("--l2-adapter", "[1]"),
                 ARGV("--l2-adapter", "[1]"));
    expect_usage("--l2-adapter #0: missing 'type'", ARGC("--l2-adapter", "{}"), ARGV("--l2-adapter", "{}"));
    expect_usage("--l2-adapter #1: unknown L2 adapter type 'tape'",
                 ARGC("--l2-adapter", "{\"type\":\"fs\",\"base_path\":\"/tmp\"}", "--l2-adapter", "{\"type\":\"tape\"}"),
                 ARGV("--l2-adapter", "{\"type\":\"fs\",\"base_path\":\"/tmp\"}", "--l2-adapter", "{\"type\":\"tape\"}"));
    expect_usage("cannot read '/nonexistent.json'", ARGC("--config", "/nonexistent.json"), ARGV("--config", "/nonexistent.json"));
    expect_usage("requires --otlp-endpoint", ARGC("--enable-tracing"), ARGV("--enable-tracing"));
    expect_usage("unrecognized arguments: --bogus", ARGC("--bogus"), ARGV("--bogus"));
    expect_usage("not a power of two", ARGC("--l1-align-bytes", "1000"), ARGV("--l1-align-bytes", "1000"));
}

Test(config, bool_pairs_prefixes_and_plugin_list)
{
    struct lmcd_config c;
    char e[256] = { 0 };
    cr_assert_eq(LOAD(&c, e, "--no-l1-use-lazy", "--runtime-plugin-locations", "a", "b", "--l1-size", "2",
                      "--runtime-plugin-locations", "c"),
                 CONFIG_RUN, "%s", e);
    cr_assert(!c.storage.l1_use_lazy);
    cr_assert_eq(c.storage.l1_size_bytes, 2ull << 30);
    cr_assert_eq(c.mp.n_plugin_locations, 1, "last occurrence wins");
    cr_assert_str_eq(c.mp.plugin_locations[0], "c");
    config_free(&c);
}

Test(config, config_file_under_command_line)
{
    char path[] = "/tmp/lmcd-cfg-XXXXXX";
    int fd = mkstemp(path);
    const char *j = "{\"mp_config\": {\"port\": 6000, \"chunk_size\": 128}, \"storage_manager_config\": "
                    "{\"eviction_config\": {\"trigger_watermark\": 0.5}}}";
    cr_assert_eq(write(fd, j, strlen(j)), (ssize_t)strlen(j));
    close(fd);
    struct lmcd_config c;
    char e[256] = { 0 };
    cr_assert_eq(LOAD(&c, e, "--config", path, "--port", "7000"), CONFIG_RUN, "%s", e);
    cr_assert_eq(c.mp.port, 7000);
    cr_assert_eq(c.mp.chunk_size, 128);
    cr_assert_float_eq(c.storage.eviction_trigger_watermark, 0.5, 1e-12);
    config_free(&c);
    j = "{\"mp_config\": {\"prot\": 1}}";
    fd = open(path, O_WRONLY | O_TRUNC);
    cr_assert_eq(write(fd, j, strlen(j)), (ssize_t)strlen(j));
    close(fd);
    expect_usage("unknown key mp_config.prot", ARGC("--config", path), ARGV("--config", path));
    unlink(path);
}

/* issue 11/16: LMCache's extra_config is a dict; a list, string, number or
 * null is refused from argv and from --config, in LMCache's wording. */
Test(config, plugin_extra_config_must_be_an_object)
{
    expect_usage("argument --runtime-plugin-config: expected a JSON object, got list",
                 ARGC("--runtime-plugin-config", "[1]"), ARGV("--runtime-plugin-config", "[1]"));
    expect_usage("argument --runtime-plugin-config: expected a JSON object, got str",
                 ARGC("--runtime-plugin-config", "\"x\""), ARGV("--runtime-plugin-config", "\"x\""));
    expect_usage("argument --runtime-plugin-config: expected a JSON object, got int",
                 ARGC("--runtime-plugin-config", "5"), ARGV("--runtime-plugin-config", "5"));
    expect_usage("argument --runtime-plugin-config: expected a JSON object, got NoneType",
                 ARGC("--runtime-plugin-config", "null"), ARGV("--runtime-plugin-config", "null"));
    struct lmcd_config c;
    char e[256] = { 0 };
    cr_assert_eq(LOAD(&c, e, "--runtime-plugin-config", ""), CONFIG_RUN, "an empty string is {}: %s", e);
    cr_assert(json_is_object(c.mp.plugin_extra_config) && !json_object_size(c.mp.plugin_extra_config));
    config_free(&c);

    char path[] = "/tmp/lmcd-cfg-XXXXXX";
    int fd = mkstemp(path);
    const char *j = "{\"mp_config\": {\"runtime_plugin_config\": {\"extra_config\": [1]}}}";
    cr_assert_eq(write(fd, j, strlen(j)), (ssize_t)strlen(j));
    close(fd);
    expect_usage("key mp_config.runtime_plugin_config.extra_config: expected a JSON object, got list",
                 ARGC("--config", path), ARGV("--config", path));
    unlink(path);
}

/* issue 11/16: with --no-http there is no HTTP address to hand plugins. */
Test(config, no_http_leaves_http_config_out)
{
    struct lmcd_config c;
    char e[256] = { 0 };
    cr_assert_eq(LOAD(&c, e, "--no-http"), CONFIG_RUN, "%s", e);
    json_t *t = config_to_json(&c);
    cr_assert_null(json_object_get(t, "http_config"), "plugins must not be told of 127.0.0.1:8080");
    json_decref(t);
    config_free(&c);
    cr_assert_eq(LOAD(&c, e, "--http-port", "8123"), CONFIG_RUN, "%s", e);
    t = config_to_json(&c);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(t, "http_config"), "http_port")), 8123);
    json_decref(t);
    config_free(&c);
}
