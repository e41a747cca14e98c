"""The L2 tier on Redis end to end: real lmcd, real redis-server (standalone
and a 3-master cluster started here on free 127.0.0.1 ports), the
engine-driven data path.

Store through a worker, wait for the write-behind to reach Redis, drop the
objects from L1, look up again (prefetch from Redis), retrieve bit for bit;
objects that LMCache wrote (plain SET under a key built here from the
spec's rules, chunk hashes from Debian's b3sum) are read by lmcd; a Redis
killed mid-run never stops the service, and lmcd stores there again once
it is back.
"""
import json
import random
import shutil
import subprocess
import urllib.request

import pytest

from conftest import LMCD_CLI, wait_for
from lmcd_client import Client, http_json
from redis_util import Redis, RedisCluster, have_redis, resp
from test_engine import CHUNK, MODEL, Worker, lookup, tokens

pytestmark = pytest.mark.skipif(not have_redis(), reason="redis-server not installed (apt-get install redis-server)")

TIMEOUT = 10.0
NONE_HASH = bytes.fromhex("7e3eff9ef7613a50340eb12677ee03b83ac759fcba9bb32705f07248d56d473b")


@pytest.fixture
def redis_factory(tmp_path):
    made = []

    def make(cluster=False, **kw):
        r = RedisCluster(tmp_path, **kw) if cluster else Redis(tmp_path, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.kill()


@pytest.fixture
def clients():
    made = []

    def make(url, timeout=TIMEOUT):
        c = Client(url, profile="lmcache-2609", timeout=timeout)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def l2_args(adapter, l1_gb="0.05"):
    return ["--chunk-size", str(CHUNK), "--l1-size-gb", l1_gb, "--l2-adapter", json.dumps(adapter)]


def adapters_status(srv):
    """Every adapter block in /status (found by its "type")."""
    found = []

    def walk(v):
        if isinstance(v, dict):
            if v.get("type") in ("resp", "valkey", "fs", "mock") and "is_healthy" in v:
                found.append(v)
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(http_json(srv.http))
    return found


def drop_l1(srv, c):
    """Empties L1 only (the objects stay in L2)."""
    c.clear(True)
    wait_for(lambda: http_json(srv.http)["storage_manager"]["l1_manager"]["total_object_count"] == 0, TIMEOUT,
             what="L1 empty")


def store_until(w, sched, rng, seed, n, done, what):
    """Stores fresh n-chunk prompts until done() holds (bounded: 30 s)."""
    count = iter(range(10000))

    def step():
        i = next(count)
        w.store(tokens(seed + i, n), f"u{seed}-{i}", 0, n, rng)
        sched.end_session(f"u{seed}-{i}")
        return done()
    wait_for(step, 30, interval=0.1, what=what)


def store_then_reload(srv, clients, count_in_l2, seed=11, n=6):
    """Stores n chunks, waits until L2 holds them, empties L1, looks up
    (prefetch from L2) and retrieves; returns (written, got)."""
    rng = random.Random(seed)
    w = Worker(clients(srv.url), 1)
    sched = clients(srv.url)
    toks = tokens(seed, n)
    written = w.store(toks, "s1", 0, n, rng)
    assert sorted(written) == list(range(n))
    wait_for(lambda: count_in_l2() >= n, TIMEOUT, what=f"{n} objects in L2")
    sched.end_session("s1")
    drop_l1(srv, sched)
    assert count_in_l2() >= n, "emptying L1 left L2 alone"
    assert lookup(sched, toks, "s2") == n, "every chunk prefetched back from L2"
    got = w.retrieve(toks, "s2", 0, n)
    sched.end_session("s2")
    w.close()
    return written, got


def test_resp_store_evict_prefetch_retrieve_bit_exact(lmcd_factory, clients, redis_factory):
    r = redis_factory()
    srv = lmcd_factory(l2_args({"type": "resp", "host": "127.0.0.1", "port": r.port}))
    written, got = store_then_reload(srv, clients, r.dbsize)
    assert got == [written[i] for i in range(len(written))], "bytes from Redis differ"
    # the keys are LMCache's: <model>@<kv_rank %08x>@<group %x>@<hash hex>
    keys = sorted(k.decode() for k in resp(r.port, "KEYS", "*"))
    assert all(k.startswith(MODEL + "@01000100@0@") and len(k.split("@")[3]) == 64 for k in keys), keys
    st = adapters_status(srv)
    assert st and st[0]["is_healthy"] is True


def test_small_l1_evicts_and_redis_serves(lmcd_factory, clients, redis_factory):
    """L1 evicts under pressure (no CLEAR); the evicted chunks come back
    from Redis bit for bit."""
    r = redis_factory()
    obj = 2 * 2 * CHUNK * 64 * 2
    srv = lmcd_factory(l2_args({"type": "resp", "host": "127.0.0.1", "port": r.port},
                               l1_gb=str(48 * (obj + 4096) / 2**30)))
    rng = random.Random(17)
    w = Worker(clients(srv.url), 1)
    sched = clients(srv.url)
    batches = []
    for b in range(60):  # bounded: stops once L1 has evicted
        toks = tokens(500 + b, 4)
        batches.append((toks, w.store(toks, f"s{b}", 0, 4, rng)))
        wait_for(lambda: r.dbsize() >= 4 * (b + 1), TIMEOUT, what="write-behind to Redis")
        if http_json(srv.http)["storage_manager"]["l1_manager"]["evicted_count"] >= 8:
            break
    assert http_json(srv.http)["storage_manager"]["l1_manager"]["evicted_count"] >= 8, "L1 never evicted"
    toks, written = batches[0]
    assert lookup(sched, toks, "old") == 4, "evicted chunks found in Redis"
    assert w.retrieve(toks, "old", 0, 4) == [written[i] for i in range(4)]
    assert http_json(srv.http)["storage_manager"]["prefetch_controller"]["loaded_chunks"] >= 4, "not from Redis"
    sched.end_session("old")
    w.close()


def test_valkey_cluster_store_evict_prefetch_retrieve_bit_exact(lmcd_factory, clients, redis_factory):
    cl = redis_factory(cluster=True, n=3)
    adapter = {"type": "valkey", "startup_nodes": cl.nodes[1].host + ":" + str(cl.nodes[1].port),
               "cluster_mode": True, "key_prefix": "lmcd"}
    srv = lmcd_factory(l2_args(adapter))
    written, got = store_then_reload(srv, clients, cl.dbsize, seed=12, n=12)
    assert got == [written[i] for i in range(12)], "bytes from the cluster differ"
    per_node = [nd.dbsize() for nd in cl.nodes]
    assert sum(per_node) == 12 and sum(1 for x in per_node if x) >= 2, f"keys not spread: {per_node}"
    # lmcd-cli l2 keys pages through every master (SCAN), LMCache key strings without the prefix
    out = subprocess.run([LMCD_CLI, "l2", "keys", MODEL, "--http-port", str(srv.http_port), "--page-size", "5"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    keys = [line for line in out.stdout.splitlines() if line.startswith(MODEL + "@")]
    assert len(keys) == 12 and all(k.startswith(MODEL + "@01000100@0@") for k in keys), out.stdout
    # DELETE /cache/objects with tier l2 removes it from the cluster
    body = json.dumps({"keys": keys[:1], "tier": "l2"}).encode()
    req = urllib.request.Request(srv.http + "/cache/objects", data=body, method="DELETE",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as rep:
        res = json.loads(rep.read())
    assert res["l2_deleted"] == 1, res
    assert cl.dbsize() == 11


def b3(data):
    out = subprocess.run(["b3sum", "--no-names", "--raw"], input=data, capture_output=True, check=True)
    return out.stdout[:32]


@pytest.mark.skipif(not shutil.which("b3sum"), reason="b3sum not installed (Debian package b3sum)")
def test_objects_written_by_lmcache_are_read(lmcd_factory, clients, redis_factory):
    """A Redis filled the way LMCache's resp connector fills it: raw bytes
    under "<model>@<kv_rank %08x>@<object_group_id %x>@<chunk_hash hex>",
    chunk hashes chained from NONE_HASH over big-endian uint32 tokens,
    kv_rank = W<<24 | w<<16 | W<<8 | w."""
    r = redis_factory()
    srv = lmcd_factory(l2_args({"type": "resp", "host": "127.0.0.1", "port": r.port}))
    w = Worker(clients(srv.url), 3)
    sched = clients(srv.url)
    n = 4
    toks = tokens(77, n)
    rng = random.Random(5)
    prev, values = NONE_HASH, []
    for c in range(n):
        prev = b3(prev + b"".join(t.to_bytes(4, "big") for t in toks[c * CHUNK:(c + 1) * CHUNK]))
        data = rng.randbytes(w.obj_bytes)
        values.append(data)
        assert resp(r.port, "SET", f"{MODEL}@{0x01000100:08x}@{0:x}@{prev.hex()}", data) == "OK"
    assert lookup(sched, toks, "lm") == n, "lmcd found LMCache's objects"
    assert w.retrieve(toks, "lm", 0, n) == values
    # an object of the wrong size is a miss, never a partial copy
    resp(r.port, "SET", f"{MODEL}@{0x01000100:08x}@{0:x}@{prev.hex()}", b"short")
    sched.end_session("lm")
    drop_l1(srv, sched)
    assert lookup(sched, toks, "lm2") == n - 1, "the truncated last chunk is not served"
    sched.end_session("lm2")
    w.close()


def test_redis_killed_mid_run_service_continues_and_recovers(lmcd_factory, clients, redis_factory):
    r = redis_factory()
    srv = lmcd_factory(l2_args({"type": "resp", "host": "127.0.0.1", "port": r.port, "num_workers": 2,
                                "request_timeout": 1.0}))
    rng = random.Random(9)
    w = Worker(clients(srv.url), 1)
    sched = clients(srv.url)
    toks = tokens(21, 4)
    w.store(toks, "a", 0, 4, rng)
    wait_for(lambda: r.dbsize() >= 4, TIMEOUT, what="first objects in Redis")
    r.kill()
    # L1 keeps serving while Redis is gone: stores and hits, no stalls
    for i in range(6):
        t2 = tokens(100 + i, 3)
        written = w.store(t2, f"b{i}", 0, 3, rng)
        assert lookup(sched, t2, f"b{i}") == 3
        assert w.retrieve(t2, f"b{i}", 0, 3) == [written[k] for k in range(3)]
        sched.end_session(f"b{i}")
    srv.wait_log("no Redis server answers", timeout=TIMEOUT)
    wait_for(lambda: any(a["is_healthy"] is False for a in adapters_status(srv)), TIMEOUT,
             what="adapter unhealthy in /status")
    # a miss in L1 looks L2 up: it must answer at once (L2 empty), not hang
    assert lookup(sched, tokens(999, 2), "miss") == 0
    r.start()  # same port, empty
    store_until(w, sched, rng, 300, 2, lambda: r.dbsize() > 0, "a store reaching Redis after it came back")
    srv.wait_log("Redis answers again", timeout=TIMEOUT)
    assert srv.log().count("no Redis server answers") == 1, "the outage is logged once"
    wait_for(lambda: all(a["is_healthy"] for a in adapters_status(srv)), TIMEOUT, what="healthy again")
    w.close()


def test_cluster_master_killed_mid_run_other_slots_keep_working(lmcd_factory, clients, redis_factory):
    """One master of three dies: lmcd keeps serving, the other masters still
    take stores; the dead one's node line is logged once; after it restarts
    (same port, its nodes.conf) its slots take stores again."""
    cl = redis_factory(cluster=True, n=3)
    adapter = {"type": "valkey", "startup_nodes": cl.seeds, "cluster_mode": True, "request_timeout": 1.0,
               "connection_timeout": 1.0, "num_workers": 2}
    srv = lmcd_factory(l2_args(adapter))
    rng = random.Random(31)
    w = Worker(clients(srv.url), 1)
    sched = clients(srv.url)
    toks = tokens(600, 6)
    w.store(toks, "a", 0, 6, rng)
    sched.end_session("a")
    wait_for(lambda: cl.dbsize() >= 6, TIMEOUT, what="objects in the cluster")
    dead = cl.nodes[1]
    dead.kill()
    before = [cl.nodes[0].dbsize(), cl.nodes[2].dbsize()]
    for i in range(8):
        t2 = tokens(700 + i, 4)
        written = w.store(t2, f"b{i}", 0, 4, rng)
        assert lookup(sched, t2, f"b{i}") == 4, "L1 still serves"
        assert w.retrieve(t2, f"b{i}", 0, 4) == [written[k] for k in range(4)]
        sched.end_session(f"b{i}")
    wait_for(lambda: cl.nodes[0].dbsize() + cl.nodes[2].dbsize() > sum(before), TIMEOUT,
             what="stores reaching the live masters")
    srv.wait_log(f"{dead.host}:{dead.port} unreachable", timeout=TIMEOUT)
    assert srv.log().count(f"{dead.host}:{dead.port} unreachable") == 1, "a node's outage is logged once"
    assert "no Redis server answers" not in srv.log(), "two masters answer: the adapter is not down"
    dead.start()
    store_until(w, sched, rng, 900, 4, lambda: dead.dbsize() > 0, "stores reaching the restarted master")
    srv.wait_log(f"{dead.host}:{dead.port} reachable again", timeout=TIMEOUT)
    w.close()
