"""A client of the other --protocol is named in the log, once per peer (issue 11, item 16).

lmcache-2604's FREE_LOOKUP_LOCKS (type 8) is lmcache-2609's lookup (type 8), so
a 2604 client against a 2609 lmcd is served the wrong operation without an
error. Its LOOKUP (type 5) does not decode under 2609 (store_q, unserved):
that request fits 2604 better and lmcd says so, once for that peer. The
replies are unchanged (the wire stays LMCache's).
"""
import time

import pytest

from lmcd_client import Client, make_key

P2604, P2609 = "lmcache-2604", "lmcache-2609"
HINT = "seems to speak"


def lines(srv):
    return [l for l in srv.log().splitlines() if HINT in l]


@pytest.fixture
def srv(lmcd_factory):
    return lmcd_factory(["--l1-size-gb", "0.1"])


def test_2604_client_against_2609_server_is_named_once_per_peer(srv):
    key = make_key("m", list(range(512)), 0, 512, "r1", worker_id=0)
    with Client(srv.url, profile=P2604) as a, Client(srv.url, profile=P2604) as b:
        for _ in range(3):
            uid = a.submit("lookup", key, 1)          # type 5: store_q in 2609
            with pytest.raises(TimeoutError):
                a.wait_frames(uid, 0.3)               # unserved: left unanswered, as before
        srv.wait_log(HINT)
        got = lines(srv)
        assert len(got) == 1, got
        assert "lmcache-2604, not lmcache-2609" in got[0] and "--protocol lmcache-2604" in got[0]
        assert "lookup" in got[0].lower()
        # a second peer gets its own line
        uid = b.submit("lookup", key, 1)
        with pytest.raises(TimeoutError):
            b.wait_frames(uid, 0.3)
        srv.wait_log(HINT)
        deadline = time.monotonic() + 5
        while len(lines(srv)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(lines(srv)) == 2, lines(srv)


def test_2609_client_against_2604_server_is_named(lmcd_factory):
    srv = lmcd_factory(["--l1-size-gb", "0.1", "--protocol", P2604])
    key = make_key("m", list(range(256)), 0, 256, "r1", worker_id=0)
    with Client(srv.url, profile=P2609) as c:
        uid = c.submit("prepare_store", key, 1)       # 16: a CacheBlend id in 2604
        with pytest.raises(TimeoutError):
            c.wait_frames(uid, 0.3)
    srv.wait_log(HINT)
    got = lines(srv)
    assert len(got) == 1 and "lmcache-2609, not lmcache-2604" in got[0], got


def test_a_client_of_the_right_profile_and_garbage_are_not_named(srv):
    key = make_key("m", list(range(256)), 0, 256, "r1", worker_id=0)
    with Client(srv.url, profile=P2609) as c:
        c.lookup(key)
        c.free_lookup_locks(key)
        uid = c.submit("ping")
        c.wait_frames(uid, 5)
        # a malformed request that is no request in 2604 either
        c.send_raw([b"\x01", b"\x08", b"\xc1"])
        c.noop()
    assert not lines(srv), lines(srv)
