/* netaddr: loopback classification and uid/gid lists (util/netaddr.h). */
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "util/netaddr.h"

Test(netaddr, loopback_hosts)
{
    cr_assert_eq(netaddr_host_is_loopback("127.0.0.1"), 1);
    cr_assert_eq(netaddr_host_is_loopback("127.9.8.7"), 1);
    cr_assert_eq(netaddr_host_is_loopback("::1"), 1);
    cr_assert_eq(netaddr_host_is_loopback("[::1]"), 1);
    cr_assert_eq(netaddr_host_is_loopback("localhost"), 1);
    cr_assert_eq(netaddr_host_is_loopback("::ffff:127.0.0.1"), 1);
}

Test(netaddr, wide_hosts)
{
    cr_assert_eq(netaddr_host_is_loopback("0.0.0.0"), 0);
    cr_assert_eq(netaddr_host_is_loopback("*"), 0);
    cr_assert_eq(netaddr_host_is_loopback("::"), 0);
    cr_assert_eq(netaddr_host_is_loopback("10.1.2.3"), 0);
    cr_assert_eq(netaddr_host_is_loopback("::ffff:10.0.0.1"), 0);
    cr_assert_eq(netaddr_host_is_loopback(""), -EINVAL);
}

Test(netaddr, sockaddr)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
    cr_assert(netaddr_sa_is_loopback((struct sockaddr *)&a));
    a.sin_addr.s_addr = htonl(0x0a000001);
    cr_assert_not(netaddr_sa_is_loopback((struct sockaddr *)&a));
}

Test(netaddr, id_lists)
{
    unsigned ids[4];
    size_t n;
    const char *bad;
    cr_assert_eq(netaddr_parse_ids("0, 1000 ,root", false, ids, 4, &n, &bad), 0);
    cr_assert_eq(n, 3);
    cr_assert_eq(ids[0], 0);
    cr_assert_eq(ids[1], 1000);
    cr_assert_eq(ids[2], 0, "root is uid 0");
    cr_assert_eq(netaddr_parse_ids("root", true, ids, 4, &n, &bad), 0, "group root");
    cr_assert_eq(netaddr_parse_ids("no-such-user-xyz", false, ids, 4, &n, &bad), -EINVAL);
    cr_assert_str_eq(bad, "no-such-user-xyz");
    cr_assert_eq(netaddr_parse_ids("1,,2", false, ids, 4, &n, &bad), -EINVAL);
    cr_assert_eq(netaddr_parse_ids("1,", false, ids, 4, &n, &bad), -EINVAL);
    cr_assert_eq(netaddr_parse_ids("-1", false, ids, 4, &n, &bad), -EINVAL);
    cr_assert_eq(netaddr_parse_ids("1,2,3,4,5", false, ids, 4, &n, &bad), -E2BIG, "never writes past cap");
    cr_assert_eq(netaddr_parse_ids("", false, ids, 4, &n, &bad), 0);
    cr_assert_eq(n, 0);
}
