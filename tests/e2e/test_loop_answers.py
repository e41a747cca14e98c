"""PING and QUERY_PREFETCH_STATUS answered by the loop thread (issue 10: the
control path's latency), against the real lmcd over real sockets.

Both are pool requests in LMCache's server; lmcd's loop answers them itself
when it can without waiting on a lock a pool thread may hold, so they never
queue behind a backlog of heavy requests (and save two thread hand-offs).
What still needs a wait (a worker's instance lock held, a LOOKUP still
hashing the session, an unknown id) goes to the pool as before.

Ordering, not wall time, decides each assertion (the machine may be loaded).
"""
from lmcd_client import Client, http_json, make_key, pack
from test_fair_service import CHUNK, CHUNKS, fill_shards, heavy_lookups, lookups_done


def test_ping_and_query_do_not_wait_behind_a_busy_pool(lmcd_factory):
    s = lmcd_factory(["--chunk-size", str(CHUNK), "--l1-size-gb", "0.2", "--max-workers", "1"])
    toks = list(range(CHUNKS * CHUNK))
    n = 200
    # One peer, as a scheduler: its PING and QUERY follow its own backlog of
    # heavy LOOKUPs (the pool runs one peer's jobs in order: behind all n).
    with Client(s.url, timeout=120) as a:
        fill_shards(a, "loop/m", toks)
        # a finished lookup whose result the QUERY collects
        assert a.lookup(make_key("loop/m", toks[:CHUNK * 2], 0, CHUNK * 2, "ready", world_size=64), 1) is None
        base = lookups_done(s)
        uids = [a.submit_frames("lookup", p) for p in heavy_lookups("loop/m", toks, n, "heavy")]
        ping = a.submit("ping", None)
        query = a.submit("query_prefetch_status", "ready")
        assert a.wait(ping, 60) is True
        at_ping = lookups_done(s) - base
        assert a.wait(query, 60) == 2, "the ready lookup's two chunks, answered from the loop"
        at_query = lookups_done(s) - base
        for u in uids:
            assert a.wait(u, 120) is None
    assert at_ping < n and at_query < n, \
        f"PING/QUERY answered only after the pool drained ({at_ping}, {at_query} of {n} LOOKUPs done)"
    st = http_json(s.http)
    assert st["server"]["requests"].get("ping", 0) >= 1
    assert s.proc.poll() is None


def test_query_of_a_lookup_still_hashing_waits_for_it(lmcd_factory):
    """A QUERY the loop cannot answer (the LOOKUP holds the session) goes to
    the pool, which waits for the LOOKUP: the answer is its result, never a
    premature 0."""
    s = lmcd_factory(["--chunk-size", str(CHUNK), "--l1-size-gb", "0.2"])
    toks = list(range(CHUNKS * CHUNK))
    with Client(s.url, timeout=60) as a:
        fill_shards(a, "loop/q", toks)
        for i in range(20):
            rid = f"pipelined-{i}"
            lk = a.submit("lookup", make_key("loop/q", toks, 0, len(toks), rid, world_size=64), 1)
            assert a.wait(lk, 60) is None
            q = a.submit("query_prefetch_status", rid)
            assert a.wait(q, 60) == CHUNKS
    assert s.proc.poll() is None


def test_worker_ping_refreshes_liveness_from_the_loop(lmcd_factory):
    """A worker's PING (with its instance id) is answered and counted as a
    sign of life whichever thread answers it."""
    s = lmcd_factory(["--l1-size-gb", "0.1"])
    with Client(s.url, timeout=20) as c:
        for _ in range(50):
            assert c.ping(12345) is True   # unknown instance: answered, nothing to refresh
    assert s.proc.poll() is None
