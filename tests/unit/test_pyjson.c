#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "util/pyjson.h"

static void check_float(double d, const char *want)
{
    char buf[64];
    pyjson_format_double(d, buf, sizeof(buf));
    cr_assert_str_eq(buf, want, "repr(%.17g): got %s want %s", d, buf, want);
}

Test(pyjson, floats_match_python_repr)
{
    check_float(0.8, "0.8");
    check_float(0.2, "0.2");
    check_float(120.0, "120.0");
    check_float(1e-05, "1e-05");
    check_float(0.0001, "0.0001");
    check_float(1e16, "1e+16");
    check_float(1234567890123456.0, "1234567890123456.0");
    check_float(-2.5, "-2.5");
    check_float(0.1 + 0.2, "0.30000000000000004");
    check_float(0.0, "0.0");
    check_float(1.5e300, "1.5e+300");
}

Test(pyjson, dumps_uses_python_separators_and_escapes)
{
    json_t *o = json_pack("{s:f, s:[i,b,n], s:s, s:{}}", "w", 0.8, "a", 1, 1, "s", "h\xc3\xa9\"\n\xf0\x9f\x98\x80", "e");
    char *s = pyjson_dumps(o, -1);
    cr_assert_str_eq(s, "{\"w\": 0.8, \"a\": [1, true, null], \"s\": \"h\\u00e9\\\"\\n\\ud83d\\ude00\", \"e\": {}}");
    free(s);
    s = pyjson_dumps(o, 2);
    cr_assert(strstr(s, "{\n  \"w\": 0.8,\n  \"a\": [\n    1,\n"), "%s", s);
    free(s);
    json_decref(o);
}
