#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "util/htab.h"

struct item {
    struct htab_node node;
    char key[16];
};

Test(htab, insert_find_remove_across_growth)
{
    static struct item items[1000];
    struct htab t;
    htab_init(&t);
    for (int i = 0; i < 1000; i++) {
        snprintf(items[i].key, sizeof(items[i].key), "k%d", i);
        items[i].node.key = items[i].key;
        items[i].node.key_len = strlen(items[i].key);
        cr_assert_eq(htab_insert(&t, &items[i].node), 0);
    }
    cr_assert_eq(t.count, 1000);
    for (int i = 0; i < 1000; i += 2)
        htab_remove(&t, &items[i].node);
    for (int i = 0; i < 1000; i++) {
        struct htab_node *n = htab_find(&t, items[i].key, strlen(items[i].key));
        if (i % 2)
            cr_assert_eq(htab_entry(n, struct item, node), &items[i]);
        else
            cr_assert_null(n);
    }
    struct htab_node *n, *tmp;
    size_t seen = 0;
    HTAB_FOREACH_SAFE(&t, n, tmp) {
        htab_remove(&t, n);
        seen++;
    }
    cr_assert_eq(seen, 500);
    cr_assert_eq(t.count, 0);
    htab_free(&t);
}
