/* http_auth: /config redaction (src/http/http_auth.c). */
#include <criterion/criterion.h>
#include <string.h>

#include "http/http_int.h"

static const char *str_at(json_t *root, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(root, a), b);
    return json_string_value(v);
}

Test(http_auth, redacts_secret_names_and_all_plugin_extra_config)
{
    json_error_t e;
    json_t *in = json_loads("{\"mp_config\": {\"host\": \"h\", \"runtime_plugin_config\": {\"locations\": [\"/p\"], "
                            "\"extra_config\": {\"url\": \"http://x\", \"n\": [1, \"y\"], \"deep\": {\"z\": 2}}}},"
                            " \"storage_manager_config\": {\"l2_adapter_config\": {\"adapters\": [{\"type\": \"resp\","
                            " \"Password\": \"pw\", \"api_key\": 7, \"auth\": {\"user\": \"u\"}, \"none\": null}]}},"
                            " \"runtime_plugin_extra_config\": \"plain\"}",
                            0, &e);
    cr_assert_not_null(in, "%s", e.text);
    json_t *out = http_auth_redact(in);
    cr_assert_str_eq(str_at(out, "mp_config", "host"), "h", "other values stay");
    json_t *rpc = json_object_get(json_object_get(out, "mp_config"), "runtime_plugin_config");
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(rpc, "locations"), 0)), "/p");
    json_t *extra = json_object_get(rpc, "extra_config");
    cr_assert_str_eq(json_string_value(json_object_get(extra, "url")), "<redacted>");
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(extra, "n"), 0)), "<redacted>");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(extra, "deep"), "z")), "<redacted>");
    json_t *ad = json_array_get(
        json_object_get(json_object_get(json_object_get(out, "storage_manager_config"), "l2_adapter_config"),
                        "adapters"),
        0);
    cr_assert_str_eq(json_string_value(json_object_get(ad, "type")), "resp");
    cr_assert_str_eq(json_string_value(json_object_get(ad, "Password")), "<redacted>");
    cr_assert_str_eq(json_string_value(json_object_get(ad, "api_key")), "<redacted>");
    cr_assert_str_eq(json_string_value(json_object_get(ad, "auth")), "<redacted>", "a secret-named object goes whole");
    cr_assert(json_is_null(json_object_get(ad, "none")));
    cr_assert_str_eq(json_string_value(json_object_get(out, "runtime_plugin_extra_config")), "<redacted>");
    json_decref(out);
}
