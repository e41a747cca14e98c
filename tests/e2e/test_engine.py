"""The cache engine end to end: real lmcd, real sockets, real shared memory.

Scheduler flow (LOOKUP, QUERY_PREFETCH_STATUS, FREE_LOOKUP_LOCKS,
END_SESSION), engine-driven stores and retrieves of random bytes checked bit
for bit through the mapped L1 segment (both 2609 forms), the inline path,
several workers (world size 2 and 4), MLA extra readers, many clients at
once, L1 overflow with eviction, lock and reservation TTLs, a killed worker,
CLEAR under load, and the segment's life cycle.

Every wait is bounded; nothing sleeps for timing.
"""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, shm_name, wait_for
from lmcd_client import Client, Segment, ed_payload, http_json, make_key

CHUNK = 16
MODEL = "e2e/model"
TIMEOUT = 10.0


def tokens(seed, n_chunks):
    """A token list of n_chunks chunks; distinct seeds share no chunk."""
    base = seed * 1_000_003
    return [(base + i) % 2_000_000_000 for i in range(n_chunks * CHUNK)]


def l1(srv):
    return http_json(srv.http)["storage_manager"]["l1_manager"]


def status(srv):
    return http_json(srv.http)


def server_args(extra=()):
    return ["--chunk-size", str(CHUNK), "--l1-size-gb", "0.05"] + list(extra)


@pytest.fixture
def clients():
    made = []

    def make(url, form="positional", timeout=TIMEOUT):
        c = Client(url, profile="lmcache-2609", form=form, timeout=timeout)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class Worker:
    """One engine-driven worker: its own client, instance id, shard and mapping."""

    def __init__(self, client, instance_id, world_size=1, worker_id=0, hidden=64, mla=False):
        self.c = client
        self.iid = instance_id
        self.world = world_size
        self.wid = worker_id
        reg = client.register_ed(ed_payload(instance_id, model=MODEL, world_size=world_size, block_size=CHUNK,
                                            num_layers=2, hidden_dim_size=hidden, use_mla=mla,
                                            chunk_size=CHUNK))
        assert reg.get("error") is None, reg
        assert reg["shm_name"] and reg["pool_size"] > 0
        self.reg = reg
        self.seg = Segment(reg["shm_name"])
        assert self.seg.size == reg["pool_size"]
        self.obj_bytes = (1 if mla else 2) * 2 * CHUNK * hidden * 2  # bfloat16

    def key(self, toks, rid, c0, c1):
        return make_key(MODEL, toks, c0 * CHUNK, c1 * CHUNK, rid, world_size=self.world, worker_id=self.wid)

    def store(self, toks, rid, c0, c1, rng=None, racing_clear=False):
        """PREPARE_STORE, random bytes into each slot, COMMIT_STORE.
        Returns {chunk index: bytes written}. With racing_clear a forced
        CLEAR may drop the reservations first (commit false, nothing stored)."""
        rng = rng or random
        key = self.key(toks, rid, c0, c1)
        ctx = self.c.prepare_store(key, self.iid)["context"]
        assert len(ctx["slots"]) == len(ctx["chunk_indices"])
        written = {}
        for slot, idx in zip(ctx["slots"], ctx["chunk_indices"]):
            assert slot["length"] == self.obj_bytes
            assert slot["dtype"] == "bfloat16"
            assert 0 <= slot["offset"] and slot["offset"] + slot["length"] <= self.seg.size
            data = rng.randbytes(slot["length"])
            self.seg.write(slot["offset"], data)
            written[c0 + idx] = data
        if written:
            ok = self.c.commit_store(key, self.iid)
            if racing_clear and ok is False:
                return {}
            assert ok is True
        return written

    def retrieve(self, toks, rid, c0, c1):
        """PREPARE_RETRIEVE, copy the slots out, COMMIT_RETRIEVE. None on a miss."""
        key = self.key(toks, rid, c0, c1)
        r = self.c.prepare_retrieve(key, self.iid)
        out = None
        if r["success"]:
            slots = r["context"]["slots"]
            assert len(slots) == c1 - c0
            out = [self.seg.read(s["offset"], s["length"]) for s in slots]
        else:
            assert r["context"] == {} and r["data"] == b""
        assert self.c.commit_retrieve(key, self.iid) is True
        return out

    def close(self):
        self.seg.close()


def lookup(c, toks, rid, world=1, tp=1, readers=None):
    """The scheduler's LOOKUP, then QUERY_PREFETCH_STATUS until it answers."""
    key = make_key(MODEL, toks, 0, len(toks) // CHUNK * CHUNK, rid, world_size=world,
                   num_kv_readers=readers)
    assert c.lookup(key, tp) is None
    return c.poll_prefetch_status(rid, timeout=TIMEOUT)


def sched_key(toks, rid, c0, c1, world=1):
    return make_key(MODEL, toks, c0 * CHUNK, c1 * CHUNK, rid, world_size=world)


# ---------------------------------------------------------------- scheduler flow


def test_scheduler_flow_lookup_query_free_end(lmcd_factory, clients):
    srv = lmcd_factory(server_args())
    w = Worker(clients(srv.url), 1)
    sched = clients(srv.url)
    toks = tokens(1, 6)
    assert len(w.store(toks, "req", 0, 4)) == 4

    assert lookup(sched, toks, "req") == 4, "4 of 6 chunks cached"
    assert sched.query_prefetch_status("req") == 0, "delivered exactly once"
    assert sched.query_prefetch_status("never-looked-up") == 0
    assert l1(srv)["read_locked_count"] == 4
    assert status(srv)["active_sessions"] >= 1

    # vLLM's own prefix cache holds chunk 0-1: the scheduler frees them
    assert sched.free_lookup_locks(sched_key(toks, "req", 0, 2)) is None
    assert l1(srv)["read_locked_count"] == 2
    # another request's FREE never touches this request's locks
    assert sched.free_lookup_locks(sched_key(toks, "other", 0, 4)) is None
    assert l1(srv)["read_locked_count"] == 2
    assert sched.end_session("req") is None
    assert l1(srv)["read_locked_count"] == 0
    assert sched.end_session("req") is None, "unknown id: still answered"
    w.close()


def test_lookup_hits_before_status_and_wait(lmcd_factory, clients):
    srv = lmcd_factory(server_args())
    w = Worker(clients(srv.url), 1)
    sched = clients(srv.url)
    toks = tokens(2, 3)
    w.store(toks, "w", 0, 3)
    key = make_key(MODEL, toks, 0, 3 * CHUNK, "r")
    assert sched.lookup(key) is None
    hits = wait_for(lambda: sched.query_prefetch_lookup_hits("r") is not None and
                    sched.query_prefetch_lookup_hits("r"), TIMEOUT, what="lookup hits")
    assert hits == 3
    assert sched.wait_prefetch_status("r", 2.0) == 3
    assert sched.query_prefetch_status("r") == 0
    sched.end_session("r")
    w.close()


# ---------------------------------------------------------------- engine-driven data path


@pytest.mark.parametrize("form", ["positional", "message"])
def test_engine_driven_store_retrieve_random_bytes(lmcd_factory, clients, form):
    srv = lmcd_factory(server_args())
    rng = random.Random(7)
    w = Worker(clients(srv.url, form=form), 5)
    sched = clients(srv.url, form=form)
    toks = tokens(3, 5)
    # store [1, 5) first: chunk_indices count from start
    written = w.store(toks, "req", 1, 5, rng)
    assert sorted(written) == [1, 2, 3, 4]
    assert lookup(sched, toks, "req") == 0, "chunk 0 missing: no prefix"
    written.update(w.store(toks, "req", 0, 5, rng))
    assert sorted(written) == [0, 1, 2, 3, 4]
    assert w.store(toks, "req", 0, 5, rng) == {}, "all cached: empty lists"
    assert lookup(sched, toks, "req") == 5

    got = w.retrieve(toks, "req", 0, 5)
    assert got is not None
    for i, data in enumerate(got):
        assert data == written[i], f"chunk {i} differs"
    got = w.retrieve(toks, "req", 2, 4)
    assert got == [written[2], written[3]], "a middle range comes back in chunk order"
    sched.end_session("req")
    assert l1(srv)["read_locked_count"] == 0
    assert l1(srv)["write_locked_count"] == 0
    w.close()


def test_reservations_are_invisible_until_commit(lmcd_factory, clients):
    srv = lmcd_factory(server_args())
    w = Worker(clients(srv.url), 1)
    sched = clients(srv.url)
    toks = tokens(4, 2)
    key = w.key(toks, "r", 0, 2)
    ctx = w.c.prepare_store(key, 1)["context"]
    assert ctx["chunk_indices"] == [0, 1]
    for s in ctx["slots"]:
        w.seg.write(s["offset"], b"\xab" * s["length"])
    assert l1(srv)["write_locked_count"] == 2
    assert lookup(sched, toks, "s1") == 0
    assert w.retrieve(toks, "r", 0, 2) is None
    # a second worker's PREPARE_STORE of the same chunks gets nothing to write
    w2 = Worker(clients(srv.url), 2)
    assert w2.store(toks, "r2", 0, 2) == {}
    assert w.c.commit_store(key, 1) is True
    assert lookup(sched, toks, "s2") == 2
    assert w.retrieve(toks, "r", 0, 2) == [b"\xab" * w.obj_bytes] * 2
    # nothing pending any more: COMMIT_STORE is false
    assert w.c.commit_store(key, 1) is False
    for rid in ("s1", "s2"):
        sched.end_session(rid)
    w.close()
    w2.close()


def test_pickle_commit_publishes_nothing(lmcd_factory, clients):
    srv = lmcd_factory(server_args())
    w = Worker(clients(srv.url), 1)
    sched = clients(srv.url)
    toks = tokens(5, 2)
    key = w.key(toks, "r", 0, 2)
    assert len(w.c.prepare_store(key, 1)["context"]["slots"]) == 2
    assert w.c.commit_store(key, 1, b"\x80\x04pickled") is False
    assert l1(srv)["write_locked_count"] == 0
    assert l1(srv)["total_object_count"] == 0
    assert lookup(sched, toks, "s") == 0
    w.close()


def test_registration_refusals_carry_error_and_a_real_segment(lmcd_factory, clients):
    srv = lmcd_factory(server_args())
    c = clients(srv.url)
    for bad in (dict(dtype_str="torch.bfloat16"), dict(block_size=5), dict(num_physical_slots=2 * CHUNK)):
        args = dict(model=MODEL, block_size=CHUNK, chunk_size=CHUNK)
        args.update(bad)
        reg = c.register_ed(ed_payload(9, **args))
        assert reg.get("error"), f"{bad} should be refused: {reg}"
        assert reg["shm_name"] and reg["pool_size"] > 0, "never the pickle-mode answer"
    assert status(srv)["engine_driven_instances"] == []


# ---------------------------------------------------------------- inline path


def test_inline_round_trip_and_prefix(lmcd_factory, clients):
    srv = lmcd_factory(server_args())
    c = clients(srv.url)
    sched = clients(srv.url)
    rng = random.Random(11)
    toks = tokens(6, 4)
    chunks = [rng.randbytes(3000 + i) for i in range(4)]
    k01 = make_key(MODEL, toks, 0, 2 * CHUNK, "r", worker_id=0)
    assert c.store_inline(k01, chunks[:2]) == 2
    k3 = make_key(MODEL, toks, 3 * CHUNK, 4 * CHUNK, "r", worker_id=0)
    assert c.store_inline(k3, chunks[3:]) == 1
    kall = make_key(MODEL, toks, 0, 4 * CHUNK, "r", worker_id=0)
    assert c.retrieve_inline(kall) == chunks[:2], "the present prefix only"
    assert c.retrieve_inline(k3) == chunks[3:]
    assert lookup(sched, toks, "s") == 2
    sched.end_session("s")
    assert c.store_inline(k01, chunks[:2]) == 2, "already there counts as present"
    assert l1(srv)["total_object_count"] == 3
    wait_for(lambda: l1(srv)["read_locked_count"] == 0, TIMEOUT, what="inline read locks released")


# ---------------------------------------------------------------- several workers


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_workers_lookup_needs_every_shard(lmcd_factory, clients, world):
    srv = lmcd_factory(server_args())
    rng = random.Random(world)
    workers = [Worker(clients(srv.url), 100 + r, world_size=world, worker_id=r) for r in range(world)]
    sched = clients(srv.url)
    toks = tokens(7, 3)
    written = {}
    for w in workers[:-1]:
        written[w.wid] = w.store(toks, "req", 0, 3, rng)
    assert lookup(sched, toks, "a", world=world, tp=world) == 0, "the last shard is missing"
    last = workers[-1]
    written[last.wid] = last.store(toks, "req", 0, 2, rng)
    assert lookup(sched, toks, "b", world=world, tp=world) == 2, "chunk 2 lacks one shard"
    written[last.wid].update(last.store(toks, "req", 2, 3, rng))
    assert lookup(sched, toks, "req", world=world, tp=world) == 3
    assert l1(srv)["read_locked_count"] == 3 * world  # objects, whatever their holder count
    for w in workers:
        got = w.retrieve(toks, "req", 0, 3)
        assert got == [written[w.wid][i] for i in range(3)], f"shard {w.wid}"
    for rid in ("a", "b", "req"):
        sched.end_session(rid)
    assert l1(srv)["read_locked_count"] == 0
    for w in workers:
        w.close()


def test_mla_extra_readers(lmcd_factory, clients):
    srv = lmcd_factory(server_args())
    readers = [Worker(clients(srv.url), 200 + r, world_size=1, worker_id=0, mla=True) for r in range(4)]
    sched = clients(srv.url)
    toks = tokens(8, 2)
    written = readers[0].store(toks, "req", 0, 2)
    # world 1, tp 4: each TP rank reads the same objects
    assert lookup(sched, toks, "req", world=1, tp=4) == 2
    for i, r in enumerate(readers):
        assert r.retrieve(toks, "req", 0, 2) == [written[0], written[1]]
        left = l1(srv)["read_locked_count"]
        assert left == (2 if i < 3 else 0), f"after reader {i}"
    # num_kv_readers wins over the tp formula
    assert lookup(sched, toks, "req2", world=1, tp=4, readers=2) == 2
    readers[0].retrieve(toks, "req2", 0, 2)
    assert l1(srv)["read_locked_count"] == 2
    readers[1].retrieve(toks, "req2", 0, 2)
    assert l1(srv)["read_locked_count"] == 0
    # evictable now: a non-forced CLEAR removes them
    assert sched.clear(False) is None
    assert l1(srv)["total_object_count"] == 0
    for r in readers:
        r.close()


# ---------------------------------------------------------------- load


def worker_loop(url, iid, rounds, errors, seed, deadline, racing_clear=False):
    """store / lookup / retrieve / end with byte checks; errors collected."""
    rng = random.Random(seed)
    try:
        with Client(url, timeout=TIMEOUT) as c, Client(url, timeout=TIMEOUT) as sched:
            w = Worker(c, iid)
            for i in range(rounds):
                if time.monotonic() > deadline:
                    break
                toks = tokens(seed * 1000 + i % 5, 3)
                rid = f"{iid}-{i}"
                written = w.store(toks, rid, 0, 3, rng, racing_clear)
                n = lookup(sched, toks, rid)
                if n:
                    got = w.retrieve(toks, rid, 0, n)
                    for j in range(n):
                        if j in written and got is not None and got[j] != written[j]:
                            errors.append(f"{rid}: chunk {j} differs")
                sched.end_session(rid)
            w.close()
    except Exception as e:  # collected: a thread's assertion must fail the test
        errors.append(f"worker {iid}: {e!r}")


def run_workers(url, n, rounds, bound_s):
    errors = []
    deadline = time.monotonic() + bound_s
    threads = [threading.Thread(target=worker_loop, args=(url, 300 + i, rounds, errors, i + 1, deadline))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(bound_s + 2 * TIMEOUT)
        assert not t.is_alive(), "a client thread hung"
    return errors


def test_many_clients_at_once(lmcd_factory):
    srv = lmcd_factory(server_args(["--max-workers", "4"]))
    errors = run_workers(srv.url, 6, 25, 60)
    assert errors == []
    st = l1(srv)
    assert st["read_locked_count"] == 0
    assert st["write_locked_count"] == 0
    assert status(srv)["counters"]["stored_chunks"] > 0


def test_l1_overflow_evicts_and_keeps_answering(lmcd_factory, clients):
    # 0.01 GiB holds ~160 objects of 64 KiB; we store ~500
    srv = lmcd_factory(["--chunk-size", str(CHUNK), "--l1-size-gb", "0.01"])
    w = Worker(clients(srv.url), 1, hidden=512)
    sched = clients(srv.url)
    total = l1(srv)["memory_total_bytes"]
    cap = total // w.obj_bytes
    assert 50 < cap < 300
    stored = 0
    last = None
    for batch in range(50):
        toks = tokens(1000 + batch, 10)
        last = (toks, w.store(toks, f"r{batch}", 0, 10))
        stored += len(last[1])
        st = l1(srv)
        assert st["memory_used_bytes"] <= st["memory_total_bytes"]
        assert st["total_object_count"] <= cap
    assert stored == 500, "demand eviction made room for every store"
    st = l1(srv)
    assert st["evicted_count"] >= stored - cap
    assert st["demand_evicted_count"] + st["evicted_count"] > 0
    toks, written = last
    assert lookup(sched, toks, "check") == 10, "the newest batch survived"
    assert w.retrieve(toks, "check", 0, 10) == [written[i] for i in range(10)]
    assert lookup(sched, tokens(1000, 10), "old") == 0, "the oldest batch was evicted"
    sched.end_session("check")
    assert sched.noop() == "OK"
    w.close()


def test_l1_full_of_locked_objects_skips_stores(lmcd_factory, clients):
    srv = lmcd_factory(["--chunk-size", str(CHUNK), "--l1-size-gb", "0.01"])
    w = Worker(clients(srv.url), 1, hidden=512)
    sched = clients(srv.url)
    cap = l1(srv)["memory_total_bytes"] // w.obj_bytes
    toks = tokens(2000, cap)
    assert len(w.store(toks, "fill", 0, cap)) == cap
    assert lookup(sched, toks, "lockall") == cap
    extra = tokens(2001, 3)
    assert w.store(extra, "x", 0, 3) == {}, "nothing fits and nothing is evictable"
    st = l1(srv)
    assert st["allocation_failures"] >= 3
    assert st["total_object_count"] == cap
    sched.end_session("lockall")
    assert len(w.store(extra, "x", 0, 3)) == 3
    w.close()


# ---------------------------------------------------------------- expiry, death, CLEAR


def test_stale_locks_and_reservations_expire(lmcd_factory, clients):
    srv = lmcd_factory(server_args(["--l1-read-ttl-seconds", "1", "--l1-write-ttl-seconds", "1",
                                    "--worker-reap-timeout-seconds", "0"]))
    w = Worker(clients(srv.url), 1)
    sched = clients(srv.url)
    toks = tokens(9, 4)
    w.store(toks, "w", 0, 2)
    assert lookup(sched, toks, "r") == 2
    key = w.key(toks, "r", 2, 4)
    assert len(w.c.prepare_store(key, 1)["context"]["slots"]) == 2
    st = l1(srv)
    assert st["read_locked_count"] == 2 and st["write_locked_count"] == 2
    wait_for(lambda: l1(srv)["read_locked_count"] == 0 and l1(srv)["write_locked_count"] == 0, 10,
             what="locks and reservations to expire")
    assert w.c.commit_store(key, 1) is False, "an expired reservation is never published"
    assert lookup(sched, toks, "r2") == 2
    assert l1(srv)["expired_reservations"] >= 2
    w.close()


WORKER_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from lmcd_client import Client, Segment, ed_payload, make_key
url, chunk = sys.argv[2], int(sys.argv[3])
c = Client(url, timeout=10)
c.register_ed(ed_payload(77, model="e2e/model", block_size=chunk, hidden_dim_size=64, chunk_size=chunk))
toks = list(range(4 * chunk))
k = make_key("e2e/model", toks, 0, 2 * chunk, "dead", worker_id=0)
assert c.prepare_retrieve(k, 77)["success"]
k2 = make_key("e2e/model", toks, 2 * chunk, 4 * chunk, "dead", worker_id=0)
assert len(c.prepare_store(k2, 77)["context"]["slots"]) == 2
print("ready", flush=True)
sys.stdin.read()  # parked until killed (or the test closes stdin)
"""


def spawn_dying_worker(srv):
    p = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT,
                          os.path.join(ROOT, "clients", "python"), srv.url, str(CHUNK)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not line:
        line = p.stdout.readline()
    assert line.strip() == b"ready", p.stderr.read().decode()
    return p


def store_first_two(srv, clients):
    w = Worker(clients(srv.url), 1)
    w.store(list(range(4 * CHUNK)), "w", 0, 2)
    return w


def test_killed_worker_is_reaped(lmcd_factory, clients):
    srv = lmcd_factory(server_args(["--worker-reap-timeout-seconds", "2"]))
    w = store_first_two(srv, clients)
    p = spawn_dying_worker(srv)
    st = l1(srv)
    assert st["read_locked_count"] == 2 and st["write_locked_count"] == 2
    p.kill()
    p.wait(5)
    wait_for(lambda: l1(srv)["read_locked_count"] == 0 and l1(srv)["write_locked_count"] == 0, 15,
             what="the dead worker's locks to be reaped")
    assert status(srv)["counters"]["reaped_workers"] >= 1
    assert "silent for over 2 s" in srv.log()
    # the reservations were never published
    sched = clients(srv.url)
    assert lookup(sched, list(range(4 * CHUNK)), "s") == 2
    w.close()


def test_unregister_releases_a_dead_workers_locks(lmcd_factory, clients):
    srv = lmcd_factory(server_args(["--worker-reap-timeout-seconds", "0"]))
    w = store_first_two(srv, clients)
    p = spawn_dying_worker(srv)
    p.send_signal(signal.SIGKILL)
    p.wait(5)
    assert l1(srv)["write_locked_count"] == 2
    assert clients(srv.url).unregister_ed(77) is None
    st = l1(srv)
    assert st["read_locked_count"] == 0 and st["write_locked_count"] == 0
    assert st["total_object_count"] == 2
    w.close()


def test_clear_while_requests_run(lmcd_factory, clients):
    srv = lmcd_factory(server_args(["--max-workers", "2"]))
    errors = []
    deadline = time.monotonic() + 30
    threads = [threading.Thread(target=worker_loop, args=(srv.url, 400 + i, 40, errors, 50 + i, deadline, True))
               for i in range(4)]
    for t in threads:
        t.start()
    admin = clients(srv.url)
    clears = 0
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline and clears < 200:
        assert admin.clear(clears % 2 == 0) is None
        clears += 1
    for t in threads:
        t.join(TIMEOUT * 3)
        assert not t.is_alive(), "a client hung while CLEAR ran"
    assert errors == []
    assert clears > 0
    assert status(srv)["counters"]["stored_chunks"] > 0, "work ran beside the CLEARs"
    assert srv.proc.poll() is None
    assert admin.clear(True) is None
    wait_for(lambda: l1(srv)["pending_free_count"] == 0 and l1(srv)["read_locked_count"] == 0, TIMEOUT,
             what="no held objects after the load")


# ---------------------------------------------------------------- segment life cycle


def test_segment_is_private_and_gone_after_stop(lmcd_factory):
    name = shm_name("seg")
    srv = lmcd_factory(server_args(["--shm-name", name]))
    path = f"/dev/shm/{name}"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert status(srv)["storage_manager"]["l1_manager"]["shm_name"] == name
    assert srv.stop() == 0
    assert not os.path.exists(path)


def test_stale_segment_of_a_dead_lmcd_is_replaced(lmcd_factory, clients):
    name = shm_name("stale")
    path = f"/dev/shm/{name}"
    first = lmcd_factory(server_args(["--shm-name", name]))
    ino = os.stat(path).st_ino
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(5)
    assert os.path.exists(path), "SIGKILL leaves the segment behind"
    second = lmcd_factory(server_args(["--shm-name", name]))
    assert os.stat(path).st_ino != ino, "a fresh segment replaced the stale one"
    assert "stale" in second.log().lower()
    w = Worker(clients(second.url), 1)
    assert len(w.store(tokens(10, 2), "r", 0, 2)) == 2
    w.close()
    assert second.stop() == 0
    assert not os.path.exists(path)


def test_segment_of_a_live_lmcd_is_not_taken(lmcd_factory):
    name = shm_name("live")
    first = lmcd_factory(server_args(["--shm-name", name]))
    second = lmcd_factory(server_args(["--shm-name", name]), ready=False)
    assert second.proc.wait(TIMEOUT) != 0
    assert first.proc.poll() is None
    assert os.path.exists(f"/dev/shm/{name}")
    assert first.stop() == 0
    assert not os.path.exists(f"/dev/shm/{name}")


def test_unregistered_or_invalid_worker_requests_get_safe_replies(lmcd_factory, clients):
    srv = lmcd_factory(server_args())
    c = clients(srv.url)
    toks = tokens(11, 4)
    key = make_key(MODEL, toks, 0, 4 * CHUNK, "r", worker_id=0)
    assert c.prepare_store(key, 5) == {"context": {"slots": [], "chunk_indices": []}}
    assert c.commit_store(key, 5) is False
    assert c.prepare_retrieve(key, 5) == {"success": False, "data": b"", "context": {}}
    assert c.commit_retrieve(key, 5) is True
    w = Worker(c, 1)
    bad = make_key(MODEL, toks, 0, 4 * CHUNK, "r", world_size=2, worker_id=3)
    assert c.prepare_store(bad, 1) == {"context": {"slots": [], "chunk_indices": []}}
    short = make_key(MODEL, toks[:CHUNK + 3], 0, 4 * CHUNK, "r", worker_id=0)
    assert len(c.prepare_store(short, 1)["context"]["slots"]) == 1, "only the chunks the tokens cover"
    t0 = time.monotonic()
    assert c.wait_prefetch_status("never", 3.0) == 0
    assert time.monotonic() - t0 < 2.0, "an unknown id is answered at once"
    assert l1(srv)["write_locked_count"] == 1
    assert c.unregister_ed(1) is None
    assert l1(srv)["write_locked_count"] == 0
    w.close()
