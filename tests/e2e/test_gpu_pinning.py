"""Pinned L1 on the GPU path, on the emulated CUDA driver (docs/gpu.md).

lmcd pins its L1 segment for DMA in slices, from a thread of its own, as far
as the (lazily committed) segment exists; copies whose chunk objects are not
pinned yet go through pinned bounce buffers. The emulated driver can slow
pinning down (FAKECUDA_PIN_DELAY_MS per GiB), refuse it as a memlock limit
does (FAKECUDA_PIN_FAIL, FAKECUDA_PIN_LIMIT_MB), faults every registered
page in as the real driver does, and faults a kernel that touches an
unpinned L1 extent (CUDA_ERROR_ILLEGAL_ADDRESS, which every test here
asserts never happened: no `fakecuda:` line in lmcd's log). Nothing here
ran on a GPU.
"""
import json
import os
import time
import urllib.request

import pytest

from conftest import wait_for
from test_gpu_emulated import (CHUNK, Cache, fake_errors, gpu_lmcd, key_of, lookup, pytestmark,  # noqa: F401
                               register, retrieve, store)
from test_protocol import clients  # noqa: F401


def http_json(s, path):
    with urllib.request.urlopen(s.http + path, timeout=10) as r:
        return json.loads(r.read())


def gpu_status(s):
    return http_json(s, "/status")["gpu"]


def objects(s):
    """Chunk objects moved, by path, from /metrics (lmcd_gpu_objects_total)."""
    with urllib.request.urlopen(s.http + "/metrics", timeout=10) as r:
        text = r.read().decode()
    got = {}
    for ln in text.splitlines():
        if ln.startswith("lmcd_gpu_objects_total{path="):
            got[ln.split('"')[1]] = int(float(ln.split()[-1]))
    assert set(got) == {"direct", "staging", "bounce"}, text
    return got


def allocated(s):
    """Bytes of the L1 segment that exist (a lazy segment commits as it fills)."""
    return os.stat(f"/dev/shm/{s.shm_name}").st_blocks * 512


def stop_clean(s):
    s.stop()
    log = s.log()
    assert "fakecuda: leak" not in log, log
    return log


def round_trip(s, c, sched, iid, cache, base, nch, rid):
    """STORE nch chunks from blocks 1.., RETRIEVE them into the last blocks,
    compare bit for bit."""
    bpc = CHUNK // cache.bs
    toks = list(range(base, base + nch * CHUNK))
    src = list(range(1, 1 + nch * bpc))
    dst = list(range(cache.nb - nch * bpc, cache.nb))
    assert set(src).isdisjoint(dst)
    cache.fill(src, base)
    assert store(s, c, iid, key_of(toks, 0, nch * CHUNK, rid + "s"), src)
    assert lookup(sched, toks, nch * CHUNK, rid + "l", want=nch) == nch
    assert retrieve(s, c, iid, key_of(toks, 0, nch * CHUNK, rid + "l"), dst)
    assert cache.blocks(dst) == cache.blocks(src), "retrieved blocks differ from the stored ones"


def test_slow_pinning_never_stalls_requests_bounce_then_direct(gpu_lmcd, clients):  # noqa: F811
    """With pinning slowed to 400 s/GiB (2 MiB slices: 0.8 s each),
    REGISTER_KV_CACHE is answered at once, STORE/RETRIEVE during pinning are
    served bit for bit through bounce buffers (a STORE of more chunks than
    bounce slots goes in pieces), and once the slices holding the objects
    are pinned, copies go direct."""
    s = gpu_lmcd(env={"FAKECUDA_PIN_DELAY_MS": "400000"})
    assert gpu_status(s)["l1_pinning"]["state"] == "not_started", "no pinning before a GPU registers"
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=1, nb=700)  # 256 KiB objects: 16 bounce slots
    t0 = time.monotonic()
    register(c, 11, cache)
    assert time.monotonic() - t0 < 5.0, "the registration waited for pinning"
    st = gpu_status(s)
    assert st["enabled"] and st["l1_pinning"]["slices"] > 1
    round_trip(s, c, sched, 11, cache, 1000, 20, "a")  # 20 chunks > 16 slots
    got = objects(s)
    # the objects span slices 0-2 (5 MiB from the start of the data area),
    # pinned 0.8, 1.6 and 2.4 s after the registration: most went through
    # bounce buffers (how many depends on the machine's speed)
    assert got["bounce"] >= 10 and got["bounce"] + got["direct"] == 40, got
    # pinning catches up with the slices of the first chunks (slice 0, the
    # lowest committed slice, pinned first): a RETRIEVE of them goes direct
    wait_for(lambda: gpu_status(s)["l1_pinning"]["pinned_bytes"] >= 4 << 20, 60.0, what="pinning to catch up")
    bpc = CHUNK // cache.bs
    toks = list(range(1000, 1000 + 2 * CHUNK))
    dst = list(range(cache.nb - 2 * bpc, cache.nb))
    deadline = time.monotonic() + 60
    while True:
        before = objects(s)
        cache.fill(dst, 5)
        rid = f"bl{time.monotonic()}"
        assert lookup(sched, toks, 2 * CHUNK, rid, want=2) == 2
        assert retrieve(s, c, 11, key_of(toks, 0, 2 * CHUNK, rid), dst)
        assert cache.blocks(dst) == cache.blocks(list(range(1, 1 + 2 * bpc)))
        after = objects(s)
        if after["direct"] == before["direct"] + 2 and after["bounce"] == before["bounce"]:
            break
        assert time.monotonic() < deadline, ("never direct", before, after, gpu_status(s))
        time.sleep(0.5)
    assert fake_errors(s) == [], s.log()
    stop_clean(s)


def test_lazy_l1_is_pinned_only_as_far_as_committed(gpu_lmcd, clients):  # noqa: F811
    """Pinning faults pages in; on a lazy 1 GiB L1 lmcd pins only committed
    slices, so the segment keeps (nearly) the size its objects and
    commit-ahead gave it, and every pinned byte was committed."""
    s = gpu_lmcd(["--l1-size-gb", "1"])
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=2)
    register(c, 21, cache)
    round_trip(s, c, sched, 21, cache, 3000, 2, "z")
    wait_for(lambda: gpu_status(s)["l1_pinning"]["pinned_bytes"] > 0, 30.0, what="a pinned slice")
    time.sleep(1.0)  # several rounds of the pinning thread
    st = gpu_status(s)["l1_pinning"]
    size = st["segment_bytes"]
    have = allocated(s)
    assert st["pinned_bytes"] <= have, (st, have)
    assert have < size // 2, f"{have} of {size} bytes exist: pinning populated the lazy segment"
    assert st["state"] == "waiting" or st["state"] == "pinning", st
    assert fake_errors(s) == [], s.log()
    stop_clean(s)


@pytest.mark.parametrize("env,partial", [({"FAKECUDA_PIN_FAIL": "1"}, False),
                                         ({"FAKECUDA_PIN_LIMIT_MB": "6"}, True)])
def test_pin_failure_warns_once_and_serves_through_bounce(gpu_lmcd, clients, env, partial):  # noqa: F811
    """A memlock limit: one WARNING naming the fix, the rest of L1 served by
    bounce buffers, no request failed, nothing left at shutdown."""
    s = gpu_lmcd(["--no-l1-use-lazy"], env=env)
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("mla", "fp8", nb=120)
    register(c, 31, cache)
    wait_for(lambda: gpu_status(s)["l1_pinning"]["state"] == "stopped", 30.0, what="pinning to give up")
    for i in range(3):
        round_trip(s, c, sched, 31, cache, 5000 + 10000 * i, 3, f"f{i}")
    got = objects(s)
    assert got["bounce"] >= 9 if not partial else got["bounce"] + got["direct"] >= 18, got
    warns = [ln for ln in s.log().splitlines() if "pinning L1 failed" in ln]
    assert len(warns) == 1 and "WARN" in warns[0] and "LimitMEMLOCK" in warns[0] and "ulimit -l" in warns[0], warns
    errs = fake_errors(s)
    assert len(errs) == 1 and "cuMemHostRegister" in errs[0] and "OUT_OF_MEMORY" in errs[0], errs
    st = gpu_status(s)["l1_pinning"]
    assert (st["pinned_bytes"] > 0) == partial and st["failed_slices"] == 1, st
    stop_clean(s)


@pytest.mark.parametrize("path", ["direct", "staging"])
@pytest.mark.parametrize("pinned", [True, False])
def test_copy_paths_give_identical_bytes(gpu_lmcd, clients, path, pinned):  # noqa: F811
    """--gpu-copy-path direct and staging, into pinned L1 and through bounce
    buffers (pinning never done): the chunk objects in L1 are the spec 7.4
    bytes of the blocks (read back by an engine-driven worker would see the
    same), and a retrieve writes them back bit for bit."""
    env = {} if pinned else {"FAKECUDA_PIN_FAIL": "1"}
    s = gpu_lmcd(["--no-l1-use-lazy", "--gpu-copy-path", path], env=env)
    assert f"copy path {path}" in s.log()
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_hnd", "bf16", layers=3, nb=120)
    register(c, 41, cache)
    want = "done" if pinned else "stopped"
    wait_for(lambda: gpu_status(s)["l1_pinning"]["state"] == want, 30.0, what=f"pinning {want}")
    assert gpu_status(s)["copy_path"] == path
    round_trip(s, c, sched, 41, cache, 9000, 3, "p")
    # the objects' bytes in L1, seen by an engine-driven worker of the same geometry
    from lmcd_client import Segment, ed_payload
    ed = clients(s.url)
    reg = ed.register_ed(ed_payload(42, **cache.geom()))
    seg = Segment(reg["shm_name"])
    try:
        bpc = CHUNK // cache.bs
        toks = list(range(9000, 9000 + 3 * CHUNK))
        assert lookup(sched, toks, 3 * CHUNK, "pe", want=3) == 3
        r = ed.prepare_retrieve(key_of(toks, 0, 3 * CHUNK, "pe"), 42)
        assert r["success"]
        for k, slot in enumerate(r["context"]["slots"]):
            assert seg.read(slot["offset"], slot["length"]) == cache.chunk_object(range(1 + k * bpc, 1 + (k + 1) * bpc)), k
        ed.commit_retrieve(key_of(toks, 0, 3 * CHUNK, "pe"), 42)
    finally:
        seg.close()
    got = objects(s)
    moved = got["bounce"] if not pinned else got["staging" if path == "staging" else "direct"]
    assert moved >= 6, got  # 3 stored, 3 retrieved
    # the refused registration is the only driver error (never a kernel fault)
    assert [e for e in fake_errors(s) if "cuMemHostRegister" not in e] == [], s.log()
    stop_clean(s)


def test_without_unified_addressing_each_slice_is_translated(gpu_lmcd, clients):  # noqa: F811
    """FAKECUDA_NO_UVA: each pinned slice is seen by kernels at its own
    device address (cuMemHostGetDevicePointer), not the host's. Objects
    inside one slice go direct at the translated address; objects spanning
    two slices (not contiguous on the device) go through bounce buffers. A
    kernel given a host address would fault: no driver error may appear."""
    s = gpu_lmcd(["--no-l1-use-lazy"], env={"FAKECUDA_NO_UVA": "1"})
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_hnd", "bf16", layers=3, nb=200)  # 768 KiB objects over 2 MiB slices
    register(c, 51, cache)
    wait_for(lambda: gpu_status(s)["l1_pinning"]["state"] == "done", 30.0, what="pinning done")
    for i in range(2):
        round_trip(s, c, sched, 51, cache, 20000 + 10000 * i, 6, f"u{i}")
    got = objects(s)
    assert got["direct"] > 0 and got["bounce"] > 0 and got["direct"] + got["bounce"] >= 24, got
    assert fake_errors(s) == [], s.log()
    stop_clean(s)


def test_truncated_segment_stops_direct_copies(gpu_lmcd, clients):  # noqa: F811
    """Another process truncates L1; lmcd restores it in place with new
    pages, which the slices pinned before do not hold (a real driver keeps
    the old pages pinned). From then on GPU copies go through bounce
    buffers, bit for bit, with one WARNING; nothing is left at stop."""
    import subprocess
    import sys
    s = gpu_lmcd(["--no-l1-use-lazy"])
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=2, nb=200)
    register(c, 61, cache)
    wait_for(lambda: gpu_status(s)["l1_pinning"]["state"] == "done", 30.0, what="pinning done")
    round_trip(s, c, sched, 61, cache, 40000, 2, "t0")
    before = objects(s)
    assert before["direct"] == 4 and before["bounce"] == 0, before
    subprocess.run([sys.executable, "-c", f"open('/dev/shm/{s.shm_name}', 'w+b').close()"], check=True, timeout=30)
    round_trip(s, c, sched, 61, cache, 50000, 3, "t1")  # its STORE finds the loss; L1 is restored first
    after = objects(s)
    assert after["direct"] == before["direct"] and after["bounce"] == 6, after
    wait_for(lambda: "truncated by another process and restored; its pinned slices" in s.log(), 10.0,
             what="the pinning WARNING")
    warns = [ln for ln in s.log().splitlines() if "its pinned slices hold the old pages" in ln]
    assert len(warns) == 1 and "WARN" in warns[0], warns
    assert gpu_status(s)["l1_pinning"]["state"] == "stopped"
    assert fake_errors(s) == [], s.log()
    stop_clean(s)


def test_a_copy_larger_than_one_block_table_goes_in_pieces(gpu_lmcd, clients):  # noqa: F811
    """A piece's block table is uploaded from a pinned buffer of 64 KiB (an
    upload from pageable memory may first wait for the stream, so for the
    worker's event, under the registration's lock). With 1-token blocks a
    chunk has 256 blocks, so a table holds 31 chunks: a STORE and a RETRIEVE
    of 40 chunks straight to and from pinned L1 go in two pieces each, and
    every byte lands where it belongs (a RETRIEVE skipping the whole first
    piece and part of the second leaves those blocks alone)."""
    s = gpu_lmcd()
    c, sched = clients(s.url, timeout=30.0), clients(s.url, timeout=30.0)
    n = 40
    cache = Cache("fa_nhd", "bf16", layers=1, nb=(2 * n + 1) * CHUNK + 8, bs=1, nh=1, hs=8)  # 8 KiB objects
    register(c, 191, cache)
    bpc = CHUNK // cache.bs
    assert store(s, c, 191, key_of(list(range(3, 3 + CHUNK)), 0, CHUNK, "warm"), list(range(1, 1 + bpc)))
    wait_for(lambda: gpu_status(s)["l1_pinning"]["pinned_bytes"] >= 16 << 20, 20.0,
             what="the first 16 MiB of L1 pinned")
    before = objects(s)
    toks = list(range(50000, 50000 + n * CHUNK))
    src = list(range(1 + bpc, 1 + bpc + n * bpc))
    cache.fill(src, 8)
    assert store(s, c, 191, key_of(toks, 0, n * CHUNK, "big"), src)
    assert objects(s)["direct"] - before["direct"] == n, "not all objects moved straight to pinned L1"
    assert lookup(sched, toks, n * CHUNK, "bigl", want=n) == n
    dst = list(range(1 + bpc + n * bpc, 1 + bpc + 2 * n * bpc))
    skip = 31 * CHUNK + 64  # the first piece's 31 chunks, and 64 blocks into the second's first
    untouched = cache.blocks(dst[:skip])
    assert retrieve(s, c, 191, key_of(toks, 0, n * CHUNK, "bigl"), dst, skip=skip)
    assert cache.blocks(dst[:skip]) == untouched, "a skipped block was written"
    assert cache.blocks(dst[skip:]) == cache.blocks(src[skip:])
    assert objects(s)["direct"] - before["direct"] == 2 * n
    assert fake_errors(s) == [], s.log()
