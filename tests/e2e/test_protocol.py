"""Every plain-server request of both wire profiles against the real lmcd.

Exact reply values and, where mp_protocol.md gives one, exact reply bytes:
GET_CHUNK_SIZE, NOOP, PING, GET_EXPERIMENTAL, REPORT_BLOCK_ALLOCATION, LOOKUP
and the prefetch queries, FREE_LOOKUP_LOCKS, END_SESSION, CLEAR, in 2604
(ids 1-14 with the arity variants of spec 3.2) and in 2609 (positional and
the single-map message form). The engine-driven and inline data paths are in
test_protocol_engine.py.
"""
import time

import pytest

from lmcd_client import Client, http_json, http_text, make_key, pack, unpack

P2604, P2609 = "lmcache-2604", "lmcache-2609"
TIMEOUT = 5.0
NO_REPLY_WAIT = 0.4  # how long "no reply" is waited for


@pytest.fixture
def clients():
    made = []

    def make(url, profile=P2609, form="positional", timeout=TIMEOUT):
        c = Client(url, profile=profile, form=form, timeout=timeout)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def srv(lmcd_factory):
    return lmcd_factory(["--l1-size-gb", "0.1"])


@pytest.fixture
def srv2604(lmcd_factory):
    return lmcd_factory(["--l1-size-gb", "0.1", "--protocol", P2604])


def mstr(s):
    """msgpack bytes of a short str (fixstr), as the spec writes `a7 "context"`."""
    return pack(s)


def reply_frames(c, op, *args, timeout=TIMEOUT):
    """[type, response...] of op(*args) as received."""
    return c.wait_frames(c.submit(op, *args), timeout)


def assert_no_reply(c, op, *args):
    uid = c.submit(op, *args)
    with pytest.raises(TimeoutError):
        c.wait_frames(uid, NO_REPLY_WAIT)


def status(s):
    return http_json(s.http)


def l1(s):
    return status(s)["storage_manager"]["l1_manager"]


def store_chunks(c, model, tokens, rid, n_chunks, chunk=256):
    """Publishes n_chunks chunks of `tokens` through lmcd.store_inline (2609)."""
    key = make_key(model, tokens, 0, n_chunks * chunk, rid, worker_id=0)
    assert c.store_inline(key, [bytes([i]) * 64 for i in range(n_chunks)]) == n_chunks


# ---------------------------------------------------------------- GET_CHUNK_SIZE


def test_get_chunk_size_bytes_2609_positional(srv, clients):
    c = clients(srv.url)
    assert reply_frames(c, "get_chunk_size") == [b"\x15", b"\xcd\x01\x00"]
    assert c.get_chunk_size() == 256


def test_get_chunk_size_bytes_2609_message(srv, clients):
    c = clients(srv.url, form="message")
    assert reply_frames(c, "get_chunk_size") == [b"\x15", b"\x81" + mstr("chunk_size") + b"\xcd\x01\x00"]
    # the request is one empty map frame
    frames = c.roundtrip_raw([pack(7), pack(21), b"\x80"])
    assert frames == [b"\x07", b"\x15", b"\x81\xaachunk_size\xcd\x01\x00"]


def test_get_chunk_size_bytes_2604(srv2604, clients):
    c = clients(srv2604.url, profile=P2604)
    assert reply_frames(c, "get_chunk_size") == [b"\x0b", b"\xcd\x01\x00"]


@pytest.mark.parametrize("profile", [P2604, P2609])
def test_get_chunk_size_128(lmcd_factory, clients, profile):
    s = lmcd_factory(["--l1-size-gb", "0.1", "--chunk-size", "128", "--protocol", profile])
    c = clients(s.url, profile=profile)
    assert c.get_chunk_size() == 128
    assert reply_frames(c, "get_chunk_size")[1] == b"\xcc\x80"
    if profile == P2609:
        m = clients(s.url, form="message")
        assert reply_frames(m, "get_chunk_size")[1] == b"\x81\xaachunk_size\xcc\x80"


def test_uid_and_type_echoed_verbatim(srv, clients):
    """Non-minimal encodings of uid and type come back byte for byte."""
    c = clients(srv.url)
    uid = b"\xcd\x00\x05"          # 5 as uint16
    typ = b"\xd0\x15"              # 21 as int8
    assert c.roundtrip_raw([uid, typ]) == [uid, typ, b"\xcd\x01\x00"]
    big = b"\xcf\x00\x00\x01\x00\x00\x00\x00\x00"  # 2^40
    assert c.roundtrip_raw([big, b"\x15"]) == [big, b"\x15", b"\xcd\x01\x00"]
    # operation name instead of the frozen id
    name = pack("get_chunk_size")
    assert c.roundtrip_raw([b"\x00", name]) == [b"\x00", name, b"\xcd\x01\x00"]


# ---------------------------------------------------------------- NOOP, PING, EXPERIMENTAL


def test_noop_ping_experimental_2609(srv, clients):
    c = clients(srv.url)
    assert reply_frames(c, "noop") == [b"\x18", b"\xa2OK"]
    assert reply_frames(c, "ping", None) == [b"\x16", b"\xc3"]
    assert reply_frames(c, "ping", 7177312495217508281) == [b"\x16", b"\xc3"]
    assert reply_frames(c, "ping") == [b"\x16", b"\xc3"]  # pre-June form, no frame
    assert reply_frames(c, "get_experimental") == [b"\x20", b"\x90"]
    assert c.noop() == "OK" and c.ping() is True and c.ping(5) is True and c.get_experimental() == []


def test_noop_ping_experimental_2609_message(srv, clients):
    c = clients(srv.url, form="message")
    assert reply_frames(c, "noop")[1] == b"\x81\xa7message\xa2OK"
    assert reply_frames(c, "ping", None)[1] == b"\x81\xa2ok\xc3"
    assert reply_frames(c, "ping", 12345)[1] == b"\x81\xa2ok\xc3"
    assert reply_frames(c, "get_experimental")[1] == b"\x81\xa5names\x90"
    assert c.noop() == "OK" and c.ping() is True and c.get_experimental() == []


def test_noop_ping_2604(srv2604, clients):
    c = clients(srv2604.url, profile=P2604)
    assert reply_frames(c, "noop") == [b"\x0e", b"\xa2OK"]
    assert reply_frames(c, "ping") == [b"\x0c", b"\xc3"]      # 2604: no frame
    assert reply_frames(c, "ping", 42) == [b"\x0c", b"\xc3"]  # June form accepted
    assert reply_frames(c, "ping", None) == [b"\x0c", b"\xc3"]


# ---------------------------------------------------------------- REPORT_BLOCK_ALLOCATION

RECORD = {"req_id": "r", "new_block_ids": [7], "new_token_ids": [1, 2]}


def records_total(s):
    for line in http_text(s.http).splitlines():
        if line.startswith("lmcd_block_allocation_records_total "):
            return int(float(line.split()[1]))
    raise AssertionError("lmcd_block_allocation_records_total missing from /metrics")


def test_report_block_allocation_2609(srv, clients):
    c = clients(srv.url)
    assert reply_frames(c, "report_block_allocation", 5, "m", [RECORD, RECORD]) == [b"\x17"]
    m = clients(srv.url, form="message")
    assert reply_frames(m, "report_block_allocation", 5, "m", [RECORD]) == [b"\x17", b"\x80"]
    assert status(srv)["counters"]["block_allocation_records"] == 3
    assert records_total(srv) == 3
    assert status(srv)["server"]["requests"]["report_block_allocation"] == 2


def test_report_block_allocation_2604_one_and_three_frames(srv2604, clients):
    c = clients(srv2604.url, profile=P2604)
    assert reply_frames(c, "report_block_allocation", [RECORD]) == [b"\x0d"]
    assert reply_frames(c, "report_block_allocation", 9, "m", [RECORD, RECORD, RECORD]) == [b"\x0d"]
    assert reply_frames(c, "report_block_allocation", []) == [b"\x0d"]
    assert records_total(srv2604) == 4
    assert status(srv2604)["server"]["requests"]["report_block_allocation"] == 3


# ---------------------------------------------------------------- LOOKUP and the prefetch queries


def test_lookup_then_query_exactly_once_2609(srv, clients):
    c = clients(srv.url)
    toks = list(range(800))
    store_chunks(c, "m", toks, "w", 3)
    assert reply_frames(c, "lookup", make_key("m", toks, 0, 768, "r1"), 1) == [b"\x08"]
    assert c.poll_prefetch_status("r1") == 3
    assert c.query_prefetch_status("r1") == 0        # delivered exactly once
    assert c.query_prefetch_status("never-looked-up") == 0
    assert reply_frames(c, "query_prefetch_status", "never")[1] == b"\x00"


def test_lookup_miss_and_partial_prefix(srv, clients):
    c = clients(srv.url)
    toks = list(range(1000, 1800))
    store_chunks(c, "m", toks, "w", 2)
    other = toks[:256] + [5] * 512            # first chunk shared, then different
    c.lookup(make_key("m", other, 0, 768, "p"))
    assert c.poll_prefetch_status("p") == 1
    c.lookup(make_key("m", [9] * 600, 0, 512, "miss"))
    assert c.poll_prefetch_status("miss") == 0
    c.lookup(make_key("other-model", toks, 0, 512, "om"))
    assert c.poll_prefetch_status("om") == 0
    c.lookup(make_key("m", toks, 0, 512, "salted", cache_salt="tenant"))
    assert c.poll_prefetch_status("salted") == 0


def test_lookup_query_2609_message(srv, clients):
    c = clients(srv.url)
    toks = list(range(300, 900))
    store_chunks(c, "m", toks, "w", 2)
    m = clients(srv.url, form="message")
    assert reply_frames(m, "lookup", make_key("m", toks, 0, 512, "mq"), 1) == [b"\x08", b"\x80"]
    deadline = time.monotonic() + TIMEOUT
    while True:
        r = m.request("query_prefetch_status", "mq")
        if r["chunk_count"] is not None or time.monotonic() > deadline:
            break
    assert r == {"chunk_count": 2}
    assert m.request("query_prefetch_status", "mq") == {"chunk_count": 0}
    assert reply_frames(m, "query_prefetch_lookup_hits", "none")[1] == b"\x81\xabchunk_count\x00"


def test_lookup_query_2604(srv2604, clients):
    c = clients(srv2604.url, profile=P2604)
    key = make_key("m", list(range(600)), 0, 512, "q4")
    del key["cache_salt"]                      # a client predating cache_salt (7-entry map)
    assert reply_frames(c, "lookup", key, 1) == [b"\x05"]
    assert c.poll_prefetch_status("q4") == 0   # nothing stored, no registered layout
    assert c.query_prefetch_status("q4") == 0
    assert reply_frames(c, "query_prefetch_status", "unknown") == [b"\x06", b"\x00"]
    assert reply_frames(c, "query_prefetch_lookup_hits", "unknown") == [b"\x07", b"\x00"]


def test_lookup_hits_do_not_consume_the_job(srv, clients):
    c = clients(srv.url)
    toks = list(range(2000, 2600))
    store_chunks(c, "m", toks, "w", 2)
    c.lookup(make_key("m", toks, 0, 512, "h"))
    deadline = time.monotonic() + TIMEOUT
    hits = None
    while hits is None and time.monotonic() < deadline:
        hits = c.query_prefetch_lookup_hits("h")
    assert hits == 2
    assert c.query_prefetch_lookup_hits("h") == 2    # still there
    assert c.poll_prefetch_status("h") == 2
    assert c.query_prefetch_lookup_hits("h") == 0    # job gone now


def test_wait_prefetch_status(srv, clients):
    c = clients(srv.url)
    toks = list(range(3000, 3600))
    store_chunks(c, "m", toks, "w", 2)
    c.lookup(make_key("m", toks, 0, 512, "wt"))
    t0 = time.monotonic()
    assert c.wait_prefetch_status("wt", 5.0) == 2
    assert time.monotonic() - t0 < 2.5, "a finished job must be answered at once"
    t0 = time.monotonic()
    assert c.wait_prefetch_status("unknown-id", 5.0) == 0
    assert time.monotonic() - t0 < 2.5
    # the timeout may arrive as a msgpack int (msgspec converts it)
    c.lookup(make_key("m", toks, 0, 512, "wt2"))
    assert reply_frames(c, "wait_prefetch_status", "wt2", 5) == [b"\x0a", b"\x02"]
    m = clients(srv.url, form="message")
    assert m.request("wait_prefetch_status", "unknown", 1.0) == {"chunk_count": 0}


# ---------------------------------------------------------------- FREE_LOOKUP_LOCKS, END_SESSION


def test_free_lookup_locks_releases_this_lookup(srv, clients):
    c = clients(srv.url)
    toks = list(range(4000, 4600))
    store_chunks(c, "m", toks, "w", 2)
    key = make_key("m", toks, 0, 512, "fl")
    c.lookup(key)
    assert c.poll_prefetch_status("fl") == 2
    assert l1(srv)["read_locked_count"] == 2
    assert reply_frames(c, "free_lookup_locks", key, 1) == [b"\x0c"]
    assert l1(srv)["read_locked_count"] == 0
    # a second free over-releases nothing (the objects stay cached)
    c.free_lookup_locks(key)
    assert l1(srv)["read_locked_count"] == 0 and l1(srv)["total_object_count"] == 2
    m = clients(srv.url, form="message")
    assert reply_frames(m, "free_lookup_locks", key, 1) == [b"\x0c", b"\x80"]


def test_end_session_one_and_two_frames(srv, clients):
    c = clients(srv.url)
    c.lookup(make_key("m", list(range(300)), 0, 256, "s1"))
    c.lookup(make_key("m", list(range(300)), 0, 256, "s2"))
    assert status(srv)["active_sessions"] == 2
    assert reply_frames(c, "end_session", "s1") == [b"\x0d"]
    assert reply_frames(c, "end_session", "s2", {"reason": "finished"}) == [b"\x0d"]
    assert status(srv)["active_sessions"] == 0
    assert reply_frames(c, "end_session", "never-seen") == [b"\x0d"]
    m = clients(srv.url, form="message")
    assert reply_frames(m, "end_session", "x") == [b"\x0d", b"\x80"]


def test_end_session_2604(srv2604, clients):
    c = clients(srv2604.url, profile=P2604)
    c.lookup(make_key("m", list(range(300)), 0, 256, "e4"))
    assert status(srv2604)["active_sessions"] == 1
    assert reply_frames(c, "end_session", "e4") == [b"\x09"]
    assert status(srv2604)["active_sessions"] == 0


# ---------------------------------------------------------------- CLEAR


def test_clear_forms_2609(srv, clients):
    c = clients(srv.url)
    toks = list(range(5000, 5600))
    store_chunks(c, "m", toks, "w", 2)
    key = make_key("m", toks, 0, 512, "cl")
    c.lookup(key)
    assert c.poll_prefetch_status("cl") == 2
    # force=false keeps locked objects
    assert reply_frames(c, "clear", False) == [b"\x14"]
    assert l1(srv)["total_object_count"] == 2
    c.free_lookup_locks(key)
    assert reply_frames(c, "clear", False) == [b"\x14"]
    assert l1(srv)["total_object_count"] == 0
    # force=true and the no-frame form drop everything, locked or not
    store_chunks(c, "m", toks, "w", 2)
    c.lookup(make_key("m", toks, 0, 512, "cl2"))
    assert c.poll_prefetch_status("cl2") == 2
    assert reply_frames(c, "clear", True) == [b"\x14"]
    assert l1(srv)["total_object_count"] == 0
    store_chunks(c, "m", toks, "w", 2)
    assert reply_frames(c, "clear") == [b"\x14"]
    assert l1(srv)["total_object_count"] == 0
    m = clients(srv.url, form="message")
    assert reply_frames(m, "clear") == [b"\x14", b"\x80"]


def test_clear_2604(srv2604, clients):
    c = clients(srv2604.url, profile=P2604)
    assert reply_frames(c, "clear") == [b"\x0a"]
    assert reply_frames(c, "clear", True) == [b"\x0a"]   # optional trailing bool


# ---------------------------------------------------------------- 2604 registration/unregistration ids


def test_unregister_kv_cache_both_profiles(srv, srv2604, clients):
    assert reply_frames(clients(srv.url), "unregister_kv_cache", 77) == [b"\x02"]
    assert reply_frames(clients(srv2604.url, profile=P2604), "unregister_kv_cache", 77) == [b"\x02"]
    assert reply_frames(clients(srv.url, form="message"), "unregister_kv_cache", 77) == [b"\x02", b"\x80"]


def test_2604_rejects_2609_only_ids(srv2604, clients):
    c = clients(srv2604.url, profile=P2604)
    for frames in ([pack(0), pack(21)],                  # 2609 get_chunk_size = 2604 CacheBlend id
                   [pack(1), pack(32)],                  # get_experimental: no such id in 2604
                   [pack(2), pack("get_chunk_size")],    # names are 2609-only
                   [pack(3), pack(16), pack({}), pack(1)]):
        c.send_raw(frames)
        with pytest.raises(TimeoutError):
            c.recv_raw(NO_REPLY_WAIT)
    assert c.get_chunk_size() == 256
    assert srv2604.proc.poll() is None


def test_2609_every_served_id_answers(srv, clients):
    """One pass over ids 1-2, 8-24, 32 in 2609 positional form: each gets exactly
    the reply shape of its response type (the ED ids are in test_protocol_engine)."""
    c = clients(srv.url)
    key = make_key("m", list(range(300)), 0, 256, "all")
    expect = [
        ("unregister_kv_cache", (1,), None),
        ("lookup", (key, 1), None),
        ("query_prefetch_status", ("zz",), 0),
        ("wait_prefetch_status", ("zz", 0.5), 0),
        ("query_prefetch_lookup_hits", ("zz",), 0),
        ("free_lookup_locks", (key, 1), None),
        ("end_session", ("all",), None),
        ("unregister_kv_cache_engine_driven_context", (1,), None),
        ("clear", (False,), None),
        ("get_chunk_size", (), 256),
        ("ping", (None,), True),
        ("report_block_allocation", (1, "m", []), None),
        ("noop", (), "OK"),
        ("get_experimental", (), []),
    ]
    uids = [(c.submit(op, *args), op, want) for op, args, want in expect]
    for uid, op, want in uids:
        got = c.wait(uid)
        assert got == want and type(got) is type(want), f"{op}: {got!r} != {want!r}"


def test_msgpack_nil_status_is_not_a_failure(srv, clients):
    """nil means "ask again": a failure is never nil (spec 9.3)."""
    c = clients(srv.url)
    for rid in ("", "x" * 300, "ünïcode"):
        assert c.query_prefetch_status(rid) == 0
    assert unpack(reply_frames(c, "query_prefetch_status", "y")[1]) == 0
