"""A worker's PREPARE/COMMIT STORE/RETRIEVE beside another client's backlog of
data requests on the same affinity thread (issue 10: the engine-driven
path's round trips), against the real lmcd over real sockets.

lmcd's loop runs a worker's op itself while nothing of that worker's is
queued and nothing must be waited for (here: a pre-faulted L1, so every
reservation is backed): two thread hand-offs fewer per round trip, while the
affinity thread works through the other client's inline stores. Whichever
thread runs them, the worker's ops must keep their bytes and chunk order and
the other client's stores must all land. tests/unit/test_engine_nowait.c
checks the engine's side (what gives way to the pool); the speed is measured
by bench/bench_ed.c, never asserted here.
"""
from lmcd_client import Client, Segment, ed_payload, http_json, make_key, pack

CHUNK = 16
MODEL = "e2e/edloop"
HIDDEN = 64
OBJ = 2 * 2 * CHUNK * HIDDEN * 2  # 2 x 2 layers x 16 tokens x 64 x bf16
INLINE_OBJ = 256 << 10


def objects(srv):
    return http_json(srv.http)["storage_manager"]["l1_manager"]["total_object_count"]


def test_worker_ops_beside_another_clients_backlog_keep_bytes_and_order(lmcd_factory):
    # one affinity thread, every page committed at start (nothing to back)
    s = lmcd_factory(["--chunk-size", str(CHUNK), "--l1-size-gb", "0.25", "--no-l1-use-lazy",
                      "--max-gpu-workers", "1"])
    n = 150
    with Client(s.url, timeout=120) as a, Client(s.url, timeout=60) as w:
        reg = w.register_ed(ed_payload(7, model=MODEL, world_size=1, block_size=CHUNK, num_layers=2,
                                       hidden_dim_size=HIDDEN, chunk_size=CHUNK))
        assert reg.get("error") is None, reg
        seg = Segment(reg["shm_name"])
        # another client's backlog of inline stores on the one affinity thread
        uids = []
        for i in range(n):
            key = make_key(MODEL + "/inline", [i * 7 + t for t in range(CHUNK)], 0, CHUNK, f"bl-{i}", worker_id=0)
            uids.append(a.submit_frames("lmcd.store_inline", [pack(key), bytes([i % 251]) * INLINE_OBJ]))
        toks = [100000 + t for t in range(2 * CHUNK)]
        key = make_key(MODEL, toks, 0, 2 * CHUNK, "w", world_size=1, worker_id=0)
        ctx = w.prepare_store(key, 7)["context"]
        assert len(ctx["slots"]) == 2 and ctx["chunk_indices"] == [0, 1]
        data = [bytes([0x5A + i]) * OBJ for i in range(2)]
        for slot, d in zip(ctx["slots"], data):
            assert slot["length"] == OBJ
            seg.write(slot["offset"], d)
        assert w.commit_store(key, 7) is True
        r = w.prepare_retrieve(key, 7)
        assert r["success"] is True and len(r["context"]["slots"]) == 2
        slots = r["context"]["slots"]
        assert [seg.read(sl["offset"], sl["length"]) for sl in slots] == data, "the bytes written, in chunk order"
        assert w.commit_retrieve(key, 7) is True
        for u in uids:
            assert a.wait(u, 120) == 1
        assert objects(s) == n + 2
        seg.close()
    assert s.proc.poll() is None
