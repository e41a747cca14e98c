"""Data paths over the wire against the real lmcd.

- engine-driven (shared-memory) requests 14-19 of 2609, positional and
  message form: register -> prepare_store -> write the slots through the
  segment -> commit_store -> lookup -> prepare_retrieve -> read back bit for
  bit -> commit_retrieve -> unregister, plus the all-cached, miss and
  no-reservation replies byte for byte (spec 7);
- lmcd's inline ops (lmcd.store_inline / lmcd.retrieve_inline);
- the GPU path (REGISTER_KV_CACHE, STORE, RETRIEVE) on a CPU-only lmcd: no
  reply, one ERROR line per instance naming engine_driven (spec 9.3).
"""
import os
import re

import msgpack
import pytest

from conftest import wait_for
from lmcd_client import Segment, ed_payload, make_key, pack
from test_protocol import (NO_REPLY_WAIT, P2604, P2609, clients, l1, reply_frames, srv,  # noqa: F401
                           srv2604, status)

CHUNK = 256
LAYERS, HIDDEN = 2, 16
SLOT_SHAPE = [2, LAYERS, CHUNK, HIDDEN]
SLOT_BYTES = 2 * LAYERS * CHUNK * HIDDEN * 2  # bfloat16

ALL_CACHED = b"\x81\xa7context\x82\xa5slots\x90\xadchunk_indices\x90"
RETRIEVE_MISS = b"\x83\xa7success\xc2\xa4data\xc4\x00\xa7context\x80"


def worker_key(tokens, start, end, rid="req", world_size=1, worker_id=0):
    return make_key("m", tokens, start, end, rid, world_size=world_size, worker_id=worker_id)


def register(c, iid, world_size=1):
    reg = c.register_ed(ed_payload(iid, world_size=world_size, num_layers=LAYERS, hidden_dim_size=HIDDEN))
    assert reg["shm_name"] and not reg["shm_name"].startswith("/")
    assert reg["pool_size"] > 0 and reg.get("error") is None
    return reg


def check_slots(slots, pool_size):
    spans = []
    for s in slots:
        assert s["length"] == SLOT_BYTES and s["shape"] == SLOT_SHAPE and s["dtype"] == "bfloat16"
        assert 0 <= s["offset"] and s["offset"] + s["length"] <= pool_size
        spans.append((s["offset"], s["offset"] + s["length"]))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"slots overlap: {spans}"


def store(c, seg, key, iid, pool_size, want_indices):
    ctx = c.prepare_store(key, iid)["context"]
    assert ctx["chunk_indices"] == want_indices
    check_slots(ctx["slots"], pool_size)
    data = {}
    for idx, slot in zip(ctx["chunk_indices"], ctx["slots"]):
        data[idx] = os.urandom(slot["length"])
        seg.write(slot["offset"], data[idx])
    return data


@pytest.mark.parametrize("form", ["positional", "message"])
def test_engine_driven_round_trip(srv, clients, form):
    c = clients(srv.url, form=form)
    sched = clients(srv.url)
    reg = register(c, 7)
    assert register(c, 7) == reg, "re-registering an instance returns the same answer"
    assert reg["pool_size"] == os.stat("/dev/shm/" + reg["shm_name"]).st_size
    assert reg["pool_size"] == l1(srv)["pool_size"]
    seg = Segment(reg["shm_name"])
    try:
        toks = list(range(10, 10 + 3 * CHUNK + 17))       # 3 full chunks + a tail
        key = worker_key(toks, 0, 3 * CHUNK)
        written = store(c, seg, key, 7, reg["pool_size"], [0, 1, 2])
        # reserved but not committed: invisible to lookups
        sched.lookup(make_key("m", toks, 0, 3 * CHUNK, "before"))
        assert sched.poll_prefetch_status("before") == 0
        uid = c.submit("commit_store", key, 7, b"")
        assert c.wait_frames(uid)[1] == (b"\x81\xa7success\xc3" if form == "message" else b"\xc3")
        # nothing pending any more
        assert c.commit_store(key, 7) is False
        # everything cached now: the all-cached context, byte for byte
        assert reply_frames(c, "prepare_store", key, 7)[1] == ALL_CACHED

        # a longer request stores only its new chunk, indexed from `start`
        toks4 = toks[:3 * CHUNK] + list(range(5000, 5000 + CHUNK))
        key4 = worker_key(toks4, 0, 4 * CHUNK)
        written.update(store(c, seg, key4, 7, reg["pool_size"], [3]))
        assert c.commit_store(key4, 7) is True

        sched.lookup(make_key("m", toks4, 0, 4 * CHUNK, "rt"))
        assert sched.poll_prefetch_status("rt") == 4
        r = c.prepare_retrieve(key4, 7)
        assert r["success"] is True and r["data"] == b""
        assert set(r["context"]) == {"slots"}               # chunk order, no chunk_indices
        slots = r["context"]["slots"]
        check_slots(slots, reg["pool_size"])
        assert len(slots) == 4
        for i, slot in enumerate(slots):
            assert seg.read(slot["offset"], slot["length"]) == written[i], f"chunk {i} differs"
        uid = c.submit("commit_retrieve", key4, 7)
        assert c.wait_frames(uid)[1] == (b"\x81\xa7success\xc3" if form == "message" else b"\xc3")
        assert c.commit_retrieve(key4, 7) is True            # true even with nothing pending

        # a miss, byte for byte
        miss = worker_key([3] * (2 * CHUNK), 0, 2 * CHUNK)
        assert reply_frames(c, "prepare_retrieve", miss, 7)[1] == RETRIEVE_MISS
        assert c.commit_retrieve(miss, 7) is True
        # a partial hit is a miss too (all chunks of [start, end) must be present)
        part = worker_key(toks4 + [1] * CHUNK, 0, 5 * CHUNK)
        assert c.prepare_retrieve(part, 7) == {"success": False, "data": b"", "context": {}}

        frames = reply_frames(c, "unregister_kv_cache_engine_driven_context", 7)
        assert frames == ([b"\x0f", b"\x80"] if form == "message" else [b"\x0f"])
    finally:
        seg.close()


def test_commit_store_without_reservation_is_false(srv, clients):
    c = clients(srv.url)
    register(c, 1)
    key = worker_key(list(range(CHUNK)), 0, CHUNK)
    assert reply_frames(c, "commit_store", key, 1, b"") == [b"\x11", b"\xc2"]
    # pickle-mode data is refused and drops the reservation
    c.prepare_store(key, 1)
    assert c.commit_store(key, 1, b"\x80\x04N.") is False
    assert c.commit_store(key, 1, b"") is False


def test_unregistered_instance_gets_skip_and_miss(srv, clients):
    c = clients(srv.url)
    key = worker_key(list(range(2 * CHUNK)), 0, 2 * CHUNK)
    assert reply_frames(c, "prepare_store", key, 999)[1] == ALL_CACHED
    assert reply_frames(c, "prepare_retrieve", key, 999)[1] == RETRIEVE_MISS
    assert c.commit_store(key, 999) is False
    assert c.commit_retrieve(key, 999) is True


def test_unregister_drops_unpublished_reservations(srv, clients):
    c = clients(srv.url)
    reg = register(c, 2)
    toks = list(range(700, 700 + 2 * CHUNK))
    key = worker_key(toks, 0, 2 * CHUNK)
    ctx = c.prepare_store(key, 2)["context"]
    assert len(ctx["slots"]) == 2
    assert reply_frames(c, "unregister_kv_cache_engine_driven_context", 2) == [b"\x0f"]
    assert c.commit_store(key, 2) is False
    c.lookup(make_key("m", toks, 0, 2 * CHUNK, "gone"))
    assert c.poll_prefetch_status("gone") == 0
    # registering again works and the chunks can be stored anew
    assert register(c, 2)["shm_name"] == reg["shm_name"]
    assert len(c.prepare_store(key, 2)["context"]["slots"]) == 2


def test_shards_count_only_complete_chunks(srv, clients):
    """world_size 2: a chunk counts only when both shards stored it."""
    w0, w1 = clients(srv.url), clients(srv.url)
    reg = register(w0, 10, world_size=2)
    register(w1, 11, world_size=2)
    seg = Segment(reg["shm_name"])
    try:
        toks = list(range(9000, 9000 + 2 * CHUNK))
        k0 = worker_key(toks, 0, 2 * CHUNK, world_size=2, worker_id=0)
        k1 = worker_key(toks, 0, CHUNK, world_size=2, worker_id=1)
        store(w0, seg, k0, 10, reg["pool_size"], [0, 1])
        assert w0.commit_store(k0, 10) is True
        store(w1, seg, k1, 11, reg["pool_size"], [0])
        assert w1.commit_store(k1, 11) is True
        w0.lookup(make_key("m", toks, 0, 2 * CHUNK, "sh", world_size=2))
        assert w0.poll_prefetch_status("sh") == 1
    finally:
        seg.close()


def test_register_ed_refuses_what_it_cannot_serve(srv, clients):
    c = clients(srv.url)
    r = c.register_ed(ed_payload(3, dtype_str="complex128"))
    assert r.get("error"), r
    assert r["shm_name"] and r["pool_size"] > 0, "never the empty answer that means pickle mode"
    bad = ed_payload(4)
    bad["engine_group_infos"] = [{"engine_group_id": 0, "layer_indices": [0]},
                                 {"engine_group_id": 1, "layer_indices": [1]}]
    assert c.register_ed(bad).get("error")


# ---------------------------------------------------------------- inline ops


def test_inline_round_trip(srv, clients):
    c = clients(srv.url)
    toks = list(range(20000, 20000 + 3 * CHUNK))
    key = worker_key(toks, 0, 3 * CHUNK)
    chunks = [os.urandom(4096 + i) for i in range(3)]
    uid = c.submit_frames("lmcd.store_inline", [pack(key)] + chunks)
    assert c.wait_frames(uid) == [pack("lmcd.store_inline"), b"\x03"]
    assert c.retrieve_inline(key) == chunks
    # storing again: already present counts as cached
    assert c.store_inline(key, chunks) == 3
    # a longer range returns the present prefix only
    longer = worker_key(toks + [0] * CHUNK, 0, 4 * CHUNK)
    assert c.retrieve_inline(longer) == chunks
    # absent: a count of 0 and no chunk frames
    absent = worker_key([1] * CHUNK, 0, CHUNK)
    uid = c.submit_frames("lmcd.retrieve_inline", [pack(absent)])
    assert c.wait_frames(uid) == [pack("lmcd.retrieve_inline"), b"\x00"]
    # inline objects are visible to lookups
    c.lookup(make_key("m", toks, 0, 3 * CHUNK, "il"))
    assert c.poll_prefetch_status("il") == 3


# ---------------------------------------------------------------- GPU path on a CPU-only lmcd

EXT_WRAPPER = msgpack.ExtType(1, b"\x80\x04N.")  # a pickle, but no CUDA wrapper


def error_lines(s, iid):
    pat = re.compile(rf"ERROR.*instance {iid}\b.*engine_driven")
    return [line for line in s.log().splitlines() if pat.search(line)]


def expect_unanswered(c, op, *args):
    uid = c.submit(op, *args)
    with pytest.raises(TimeoutError):
        c.wait_frames(uid, NO_REPLY_WAIT)


def test_gpu_path_2609_unanswered_and_logged_once(srv, clients):
    c = clients(srv.url)
    expect_unanswered(c, "register_kv_cache", 101, [EXT_WRAPPER], "m", 1, "vllm", {"kv_layout": "NHD"}, [])
    key = worker_key(list(range(CHUNK)), 0, CHUNK)
    expect_unanswered(c, "store", key, 101, [[1, 2]], b"\x00" * 64)
    expect_unanswered(c, "retrieve", key, 101, [[1, 2]], b"\x00" * 64, 0)
    expect_unanswered(c, "store", key, 102, [[3]], b"\x00" * 64)
    wait_for(lambda: error_lines(srv, 102), 5.0, what="the ERROR line for instance 102")
    assert len(error_lines(srv, 101)) == 1, srv.log()
    assert len(error_lines(srv, 102)) == 1, srv.log()
    assert status(srv)["server"]["bad_requests"]["no_cuda"] == 4
    assert c.noop() == "OK"


def test_gpu_path_2604_register_arities(srv2604, clients):
    c = clients(srv2604.url, profile=P2604)
    forms = {
        201: (201, [EXT_WRAPPER], "m", 1),                                        # 4 frames
        202: (202, [EXT_WRAPPER], "m", 1, {"kv_layout": "NHD"}),                  # 5: hints
        203: (203, [EXT_WRAPPER], "m", 1, "vllm"),                                # 5: engine_type
        204: (204, [EXT_WRAPPER], "m", 1, "vllm", {}),                            # 6
        205: (205, [], "m", 1, "vllm", {}, []),                                   # 7
    }
    for args in forms.values():
        expect_unanswered(c, "register_kv_cache", *args)
    key = worker_key(list(range(CHUNK)), 0, CHUNK)
    expect_unanswered(c, "store", key, 201, [1, 2], b"\x00" * 64)          # flat block ids
    expect_unanswered(c, "retrieve", key, 201, [[1, 2]], b"\x00" * 64, 16)
    for iid in forms:
        wait_for(lambda: error_lines(srv2604, iid), 5.0, what=f"the ERROR line for instance {iid}")
        assert len(error_lines(srv2604, iid)) == 1, srv2604.log()
    assert status(srv2604)["server"]["requests"]["register_kv_cache"] == 5
    assert c.get_chunk_size() == 256
