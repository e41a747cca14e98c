"""A vLLM-shaped workload end to end: a scheduler and TP workers per request,
requests sharing prefixes, run concurrently against one lmcd, and the
invariant that matters most for a cache server in production: once every
request has ended, nothing is left locked or reserved.

Per request, as the connector does (mp_protocol.md 11):
  scheduler  LOOKUP (worker_id nil, tp_size) -> QUERY_PREFETCH_STATUS until an int
             FREE_LOOKUP_LOCKS for the part vLLM's own prefix cache already has
  workers    PREPARE_RETRIEVE / read the slots / COMMIT_RETRIEVE for the LMCache hit
             PREPARE_STORE / write the slots / COMMIT_STORE for the rest
  scheduler  END_SESSION
Every retrieved chunk is checked byte for byte against what was stored for
its prefix, so a wrong key, a wrong slot or a torn write cannot pass.
"""
import hashlib
import random
import threading

from conftest import wait_for
from lmcd_client import Client, Segment, ed_payload, http_json, make_key

CHUNK = 256
WORLD = 2  # TP 2: two shards per chunk
LAYERS, HIDDEN = 2, 64
OBJ = 2 * LAYERS * CHUNK * HIDDEN * 2  # bf16 [2, layers, chunk, hidden]
MODEL = "org/model-7b"
PREFIXES = 3
REQUESTS_PER_THREAD = 8
THREADS = 4


def prompt(rng, prefix_id):
    base = random.Random(1000 + prefix_id)
    shared = [base.randrange(50000) for _ in range(CHUNK * base.randrange(2, 5))]
    tail = [rng.randrange(50000) for _ in range(rng.randrange(1, 4) * CHUNK + rng.randrange(CHUNK))]
    return shared + tail


def content(tokens, chunk, shard):
    """The bytes a worker stores for a chunk: a function of the whole prefix
    up to the chunk's end (as the KV is) and of the shard."""
    h = hashlib.blake2b(repr((tokens[:(chunk + 1) * CHUNK], shard)).encode(), digest_size=64).digest()
    return (h * (OBJ // len(h) + 1))[:OBJ]


def worker_retrieve(cli, seg, iid, shard, rid, tokens, start_chunk, end_chunk):
    key = make_key(MODEL, tokens, start_chunk * CHUNK, end_chunk * CHUNK, rid, WORLD, shard)
    rep = cli.prepare_retrieve(key, iid)
    ok = rep["success"]
    if ok:
        slots = rep["context"]["slots"]
        assert len(slots) == end_chunk - start_chunk
        for i, slot in enumerate(slots):
            assert slot["length"] == OBJ and slot["dtype"] == "bfloat16"
            assert seg.read(slot["offset"], slot["length"]) == content(tokens, start_chunk + i, shard), \
                f"chunk {start_chunk + i} shard {shard} of {rid} came back wrong"
    assert cli.commit_retrieve(key, iid) is True
    return ok


def worker_store(cli, seg, iid, shard, rid, tokens, start_chunk, end_chunk):
    key = make_key(MODEL, tokens, start_chunk * CHUNK, end_chunk * CHUNK, rid, WORLD, shard)
    ctx = cli.prepare_store(key, iid)["context"]
    assert len(ctx["slots"]) == len(ctx["chunk_indices"])
    for slot, idx in zip(ctx["slots"], ctx["chunk_indices"]):
        seg.write(slot["offset"], content(tokens, start_chunk + idx, shard))
    if ctx["slots"]:
        assert cli.commit_store(key, iid) is True


def run_requests(url, seg_name, tid, errors, stats):
    rng = random.Random(tid)
    sched = Client(url, timeout=10)
    workers = [Client(url, timeout=10) for _ in range(WORLD)]
    iids = [(tid << 8) | shard for shard in range(WORLD)]
    seg = Segment(seg_name)
    try:
        for shard, w in enumerate(workers):
            rep = w.register_ed(ed_payload(iids[shard], MODEL, WORLD, 16, LAYERS, HIDDEN))
            assert rep["shm_name"] == seg_name and not rep.get("error")
        for n in range(REQUESTS_PER_THREAD):
            rid = f"req-{tid}-{n}"
            tokens = prompt(rng, rng.randrange(PREFIXES))
            full = len(tokens) // CHUNK
            sched.lookup(make_key(MODEL, tokens, 0, full * CHUNK, rid, WORLD, None), tp_size=WORLD)
            hit = sched.poll_prefetch_status(rid, timeout=10)
            assert 0 <= hit <= full
            vllm_hit = rng.randrange(hit + 1)  # what vLLM's own prefix cache already holds
            if vllm_hit:
                sched.free_lookup_locks(make_key(MODEL, tokens, 0, vllm_hit * CHUNK, rid, WORLD, None), WORLD)
            if hit > vllm_hit:
                got = [worker_retrieve(w, seg, iids[s], s, rid, tokens, vllm_hit, hit)
                       for s, w in enumerate(workers)]
                with stats["lock"]:
                    stats["retrieved"] += sum(got)
            for s, w in enumerate(workers):
                worker_store(w, seg, iids[s], s, rid, tokens, hit, full)
            with stats["lock"]:
                stats["hits"] += hit
                stats["chunks"] += full
            sched.end_session(rid)
    except Exception as e:  # reported by the main thread
        errors.append(f"thread {tid}: {e!r}")
    finally:
        seg.close()
        sched.close()
        for w in workers:
            w.close()


def test_vllm_flow_shares_prefixes_and_leaves_nothing_locked(lmcd_factory):
    srv = lmcd_factory(["--l1-size-gb", "0.25", "--max-gpu-workers", "2", "--max-cpu-workers", "2"])
    seg_name = http_json(srv.http)["storage_manager"]["l1_manager"]["shm_name"]
    errors, stats = [], {"hits": 0, "chunks": 0, "retrieved": 0, "lock": threading.Lock()}
    threads = [threading.Thread(target=run_requests, args=(srv.url, seg_name, t, errors, stats))
               for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a request thread hung"
    assert not errors, errors
    assert stats["hits"] > 0, "requests sharing a prefix must hit the cache"
    assert stats["retrieved"] > 0
    l1 = http_json(srv.http)["storage_manager"]["l1_manager"]
    assert l1["read_locked_count"] == 0, l1
    assert l1["write_locked_count"] == 0, l1
    assert l1["memory_used_bytes"] <= l1["memory_total_bytes"]
    st = http_json(srv.http)
    assert st["active_prefetch_jobs"] == 0
    wait_for(lambda: http_json(srv.http)["server"]["bad_requests"]["decode"] == 0, 1, what="no bad requests")
    assert srv.stop() == 0
