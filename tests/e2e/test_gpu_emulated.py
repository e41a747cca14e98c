"""The GPU (LMCache-driven) path end to end, on the emulated CUDA driver.

The real lmcd loads build/tests/fakecuda/libcuda.so.1 (tests/gpu/fakecuda/
fake_cuda.c) through LD_LIBRARY_PATH instead of NVIDIA's driver, so every
line of src/transfer/transfer_cuda.c and src/server/gpu.c runs: device
lookup by UUID, primary context, IPC mappings, streams, interprocess events,
pinned-L1 registration, and lmcd's kernels executed on the CPU by the index
function the .cu kernels use. This test is the vLLM worker: its "device
memory" is a memfd the fake maps from its handle, its paged KV caches
(flash-attention NHD and HND, flashinfer, MLA; bf16 and fp8 as uint8) live
there, and it pickles LMCache's CudaIPCWrapper (tests/gpu/ipc_wrapper.py, as
the GPU run does). Real ZeroMQ, real wire. Nothing here ran on a GPU: the
emulation checks lmcd against the driver's documented behaviour only.
"""
import json
import mmap
import os
import struct
import subprocess
import sys
import time
import urllib.request

import msgpack
import numpy as np
import pytest

from conftest import ROOT, wait_for
from lmcd_client import Segment, ed_payload, make_key
from test_protocol import clients  # noqa: F401

sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))
from ipc_wrapper import CudaIPCWrapper, dumps, share_handle, torch_dtype  # noqa: E402

BUILD = os.environ.get("LMCD_BUILD", "build")
FAKE_DIR = os.path.join(ROOT, BUILD, "tests", "fakecuda")
CHUNK = 256

def _cuda_build():
    """Whether this build has the CUDA backend and the emulated driver."""
    if not os.path.exists(os.path.join(FAKE_DIR, "libcuda.so.1")):
        return False
    out = subprocess.run([os.path.join(ROOT, BUILD, "lmcd"), "--version"], capture_output=True, text=True,
                         timeout=10).stdout
    return "GPU backend: CUDA" in out


pytestmark = pytest.mark.skipif(not _cuda_build(),
                                reason="built without nvcc: no CUDA backend, so no emulated driver to load")

MEM_MAGIC = b"fkcudaM\0"
EV_MAGIC = b"fkcudaE\0"


def uuid(dev):
    return f"fa4ec0da-0000-4000-8000-0000000000{dev:02x}"


# ---------------------------------------------------------------- the worker's "device"

class DevBlock:
    """One device allocation of the worker (a caching-allocator block): a
    memfd that the fake driver in lmcd maps from its IPC handle."""

    def __init__(self, size, dev=0):
        self.fd = os.memfd_create("fakecuda-kv", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size)
        self.size = size
        self.handle64 = struct.pack("<8sIIQI", MEM_MAGIC, os.getpid(), self.fd, size, dev).ljust(64, b"\0")

    def torch_handle(self):
        """PyTorch's shareable handle: [version]['c'][cudaIpcMemHandle_t]."""
        return bytes([1, ord("c")]) + self.handle64

    def close(self):
        os.close(self.fd)  # the mapping (and numpy views of it) stay valid


class Event:
    """An interprocess event of the worker, in the fake's page format."""

    def __init__(self):
        self.fd = os.memfd_create("fakecuda-ev", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, 4096)
        self.mm = mmap.mmap(self.fd, 4096)
        self.mm[0:8] = EV_MAGIC
        self.handle = struct.pack("<8sII", EV_MAGIC, os.getpid(), self.fd).ljust(64, b"\0")

    def record(self):
        """Work queued that the event will mark (not complete yet)."""
        n = struct.unpack_from("<Q", self.mm, 8)[0] + 1
        struct.pack_into("<Q", self.mm, 8, n)

    def complete(self):
        struct.pack_into("<Q", self.mm, 16, struct.unpack_from("<Q", self.mm, 8)[0])

    def close(self):
        self.mm.close()
        os.close(self.fd)


def wait_reply_event(srv, handle, timeout=20.0):
    """What torch.cuda.Event.from_ipc_handle(...).synchronize() does: wait for
    the record current when the reply was sent."""
    assert len(handle) == 64 and handle[:8] == EV_MAGIC, handle
    pid, fd = struct.unpack_from("<II", handle, 8)
    assert pid == srv.proc.pid, "the reply event belongs to lmcd"
    with open(f"/proc/{pid}/fd/{fd}", "r+b") as f, mmap.mmap(f.fileno(), 24) as m:
        target = struct.unpack_from("<Q", m, 8)[0]
        assert target >= 1, "the reply event was recorded"
        deadline = time.monotonic() + timeout
        while struct.unpack_from("<Q", m, 16)[0] < target:
            assert time.monotonic() < deadline, "the reply event never completed"
            time.sleep(0.002)


class Cache:
    """A vLLM-shaped paged KV cache: every layer in one device block, at
    storage_offset elements into a storage that starts 512 bytes in."""

    KINDS = ("fa_nhd", "fa_hnd", "fi_nhd", "mla")

    def __init__(self, kind, dtype, layers=3, nb=80, bs=16, nh=4, hs=64, dev=0, seed=1):
        self.kind, self.dtype, self.layers, self.nb, self.bs, self.nh = kind, dtype, layers, nb, bs, nh
        self.hs = 576 if kind == "mla" and hs == 64 else hs
        self.npdt = np.uint16 if dtype == "bf16" else np.uint8
        self.elem = np.dtype(self.npdt).itemsize
        hs = self.hs
        if kind == "mla":
            self.shape, phys = (nb, bs, hs), (nb, bs, hs)
        elif kind == "fi_nhd":
            self.shape, phys = (nb, 2, bs, nh, hs), (nb, 2, bs, nh, hs)
        else:
            self.shape = (2, nb, bs, nh, hs)
            phys = (2, nb, nh, bs, hs) if kind == "fa_hnd" else self.shape
        cs = [1] * len(phys)
        for i in range(len(phys) - 2, -1, -1):
            cs[i] = cs[i + 1] * phys[i + 1]
        if kind == "fa_hnd":  # logical NHD shape over HND memory (vLLM's HND view)
            self.stride = (cs[0], cs[1], cs[3], cs[2], cs[4])
        else:
            self.stride = tuple(cs)
        self.layer_elems = int(np.prod(phys))
        self.off0 = 512
        size = self.off0 + layers * self.layer_elems * self.elem
        self.block = DevBlock(size, dev)
        self.dev = dev
        raw = np.frombuffer(self.block.mm, dtype=np.uint8)
        raw[:] = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
        self.arr = []
        for la in range(layers):
            off = self.off0 + la * self.layer_elems * self.elem
            self.arr.append(np.ndarray(self.shape, self.npdt, buffer=self.block.mm, offset=off,
                                       strides=tuple(s * self.elem for s in self.stride)))

    def wrappers(self, storage_handle=None, device_uuid=None, shape=None, stride=None):
        """One pickled wrapper per layer; the arguments forge a field."""
        h = share_handle(self.dev, storage_handle or self.block.torch_handle(), self.block.size - self.off0,
                         self.off0)
        name = "bfloat16" if self.dtype == "bf16" else "uint8"
        return [msgpack.ExtType(1, dumps(CudaIPCWrapper(h, torch_dtype(name), shape or self.shape,
                                                        stride or self.stride, la * self.layer_elems,
                                                        device_uuid or uuid(self.dev))))
                for la in range(self.layers)]

    def hints(self):
        return {"kv_layout": "HND" if self.kind == "fa_hnd" else "NHD"}

    def _blk(self, a, ids):
        ids = list(ids)
        return a[:, ids] if self.kind.startswith("fa") else a[ids]

    def blocks(self, ids):
        """The bytes of these blocks, every layer, in logical order."""
        return b"".join(np.ascontiguousarray(self._blk(a, ids)).tobytes() for a in self.arr)

    def fill(self, ids, seed):
        rng = np.random.default_rng(seed)
        for a in self.arr:
            v = self._blk(a, ids)
            new = rng.integers(0, 256, v.size * self.elem, dtype=np.uint8).view(self.npdt).reshape(v.shape)
            if self.kind.startswith("fa"):
                a[:, list(ids)] = new
            else:
                a[list(ids)] = new

    def chunk_object(self, ids):
        """Spec 7.4: [2, L, T, NH*HS] (MLA: [L, T, HS]) of these blocks."""
        t = len(ids) * self.bs
        if self.kind == "mla":
            return np.stack([a[list(ids)].reshape(t, self.hs) for a in self.arr]).tobytes()
        kv = []
        for k in range(2):
            kv.append(np.stack([(a[k, list(ids)] if self.kind.startswith("fa") else a[list(ids), k])
                                .reshape(t, self.nh * self.hs) for a in self.arr]))
        return np.stack(kv).tobytes()

    def geom(self):
        return dict(block_size=self.bs, num_layers=self.layers,
                    hidden_dim_size=self.hs if self.kind == "mla" else self.nh * self.hs)


# ---------------------------------------------------------------- lmcd and the wire

@pytest.fixture
def gpu_lmcd(lmcd_factory):
    def start(args=(), devices=1, env=None):
        env = {"LD_LIBRARY_PATH": FAKE_DIR, "FAKECUDA_DEVICES": str(devices), **(env or {})}
        s = lmcd_factory(["--l1-size-gb", "0.1", *args], env=env)
        wait_for(lambda: "GPU path: CUDA driver loaded" in s.log(), 10.0, what="the GPU path line")
        return s
    return start


def fake_errors(s):
    return [ln for ln in s.log().splitlines() if "fakecuda:" in ln]


def register(c, iid, cache, model="m", world_size=1):
    assert c.call("register_kv_cache", iid, cache.wrappers(), model, world_size, "vllm", cache.hints(), []) is None


def key_of(toks, start, end, rid, model="m", world_size=1, worker_id=0):
    return make_key(model, toks, start, end, rid, world_size=world_size, worker_id=worker_id)


def store(srv, c, iid, key, blocks, on_wait=None):
    """STORE with a client event recorded but not complete: lmcd must wait
    for it before reading (on_wait runs meanwhile: the worker's last writes)."""
    ev = Event()
    try:
        ev.record()
        uid = c.submit("store", key, iid, [list(blocks)], ev.handle)
        time.sleep(0.05)
        if on_wait:
            on_wait()
        ev.complete()
        handle, ok = c.wait(uid, 60.0)
        wait_reply_event(srv, handle)
        return ok
    finally:
        ev.close()


def retrieve(srv, c, iid, key, blocks, skip=0):
    ev = Event()
    try:
        handle, ok = c.call("retrieve", key, iid, [list(blocks)], ev.handle, skip, timeout=60.0)
        wait_reply_event(srv, handle)
        return ok
    finally:
        ev.close()


def lookup(c, toks, end, rid, model="m", tp=1, want=None):
    """LOOKUP hits. With `want`: repeated (same request id) until it hits
    that many or 10 s passed: a STORE is published by lmcd's completion
    thread right after its copy completed, which may trail the moment the
    worker sees the reply event complete."""
    deadline = time.monotonic() + 10
    while True:
        c.lookup(make_key(model, toks, 0, end, rid, world_size=tp), tp_size=tp)
        got = c.poll_prefetch_status(rid, timeout=20.0)
        if want is None or got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("kind,dtype", [("fa_nhd", "bf16"), ("fa_nhd", "fp8"), ("fa_hnd", "bf16"),
                                        ("fi_nhd", "bf16"), ("mla", "bf16"), ("mla", "fp8")])
def test_store_lookup_retrieve_bit_for_bit(gpu_lmcd, clients, kind, dtype):  # noqa: F811
    s = gpu_lmcd()
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache(kind, dtype)
    register(c, 11, cache)
    bpc = CHUNK // cache.bs
    # two full chunks and a partial one (96 tokens): only full chunks are cached
    toks = list(range(500, 500 + 2 * CHUNK + 96))
    src = list(range(1, 1 + 2 * bpc + 6))
    dst = list(range(cache.nb - 2 * bpc, cache.nb))
    assert set(src).isdisjoint(dst)
    # the worker's last kernel writes the source blocks while lmcd waits on its event
    assert store(s, c, 11, key_of(toks, 0, len(toks), "st"), src, on_wait=lambda: cache.fill(src, 7))
    assert lookup(sched, toks, len(toks), "lk", want=2) == 2
    before_tail = cache.blocks(src[2 * bpc:])
    assert retrieve(s, c, 11, key_of(toks, 0, 2 * CHUNK, "lk"), dst)
    assert cache.blocks(dst) == cache.blocks(src[:2 * bpc]), "retrieved blocks differ from the stored ones"
    assert cache.blocks(src[2 * bpc:]) == before_tail
    # a miss: (valid event, false), nothing written
    other = list(range(9000, 9000 + CHUNK))
    snap = cache.blocks(dst[:bpc])
    assert retrieve(s, c, 11, key_of(other, 0, CHUNK, "miss"), dst[:bpc]) is False
    assert cache.blocks(dst[:bpc]) == snap
    assert fake_errors(s) == [], s.log()


def test_gpu_store_read_by_engine_driven_worker_and_back(gpu_lmcd, clients):  # noqa: F811
    """Same bytes in L1 whichever path wrote them (spec 7.4)."""
    s = gpu_lmcd()
    g, ed, sched = clients(s.url, timeout=60.0), clients(s.url), clients(s.url)
    cache = Cache("fa_hnd", "bf16", layers=2)
    register(g, 21, cache)
    bpc = CHUNK // cache.bs
    toks = list(range(3, 3 + CHUNK))
    src = list(range(5, 5 + bpc))
    assert store(s, g, 21, key_of(toks, 0, CHUNK, "mx"), src)
    reg = ed.register_ed(ed_payload(22, **cache.geom()))
    assert reg.get("error") is None, reg
    seg = Segment(reg["shm_name"])
    try:
        assert lookup(sched, toks, CHUNK, "mxl", want=1) == 1
        r = ed.prepare_retrieve(key_of(toks, 0, CHUNK, "mxl"), 22)
        assert r["success"]
        slot = r["context"]["slots"][0]
        assert seg.read(slot["offset"], slot["length"]) == cache.chunk_object(src), \
            "the engine-driven worker reads other bytes than the GPU worker's blocks in the spec 7.4 layout"
        assert ed.commit_retrieve(key_of(toks, 0, CHUNK, "mxl"), 22) is True
        # the other way: an engine-driven store, retrieved by the GPU worker
        toks2 = list(range(70000, 70000 + CHUNK))
        k2 = key_of(toks2, 0, CHUNK, "ed2")
        ctx = ed.prepare_store(k2, 22)["context"]
        obj = np.random.default_rng(5).integers(0, 256, ctx["slots"][0]["length"], dtype=np.uint8).tobytes()
        seg.write(ctx["slots"][0]["offset"], obj)
        assert ed.commit_store(k2, 22) is True
    finally:
        seg.close()
    assert lookup(sched, toks2, CHUNK, "ed2l", want=1) == 1
    dst = list(range(cache.nb - bpc, cache.nb))
    assert retrieve(s, g, 21, key_of(toks2, 0, CHUNK, "ed2l"), dst)
    assert cache.chunk_object(dst) == obj
    assert fake_errors(s) == [], s.log()


@pytest.mark.parametrize("null", [0, -1])
def test_null_blocks_and_skip_first_tokens(gpu_lmcd, clients, null):  # noqa: F811
    s = gpu_lmcd(["--null-block-id", str(null)])
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16")
    register(c, 31, cache)
    bpc = CHUNK // cache.bs
    toks = list(range(40, 40 + CHUNK))
    # with -1 as the sentinel, block 0 is an ordinary block
    src = list(range(0 if null == -1 else 1, bpc + (0 if null == -1 else 1)))
    assert store(s, c, 31, key_of(toks, 0, CHUNK, "n1"), src)
    assert lookup(sched, toks, CHUNK, "n1l", want=1) == 1
    dst = list(range(cache.nb - bpc, cache.nb))
    # null blocks in a retrieve are left alone, the others written
    dst_null = [null if i in (3, 9) else b for i, b in enumerate(dst)]
    before = {b: cache.blocks([b]) for b in dst}
    assert retrieve(s, c, 31, key_of(toks, 0, CHUNK, "n1l"), dst_null)
    for i, b in enumerate(dst):
        if i in (3, 9):
            assert cache.blocks([b]) == before[b], f"block {i}, null in the request, was written"
        else:
            assert cache.blocks([b]) == cache.blocks([src[i]]), f"block {i} not retrieved"
    # skip_first_n_tokens: whole leading blocks belong to vLLM's prefix cache
    assert lookup(sched, toks, CHUNK, "n2l", want=1) == 1
    dst2 = list(range(cache.nb - 2 * bpc, cache.nb - bpc))
    before2 = cache.blocks(dst2[:2])
    assert retrieve(s, c, 31, key_of(toks, 0, CHUNK, "n2l"), dst2, skip=2 * cache.bs)
    assert cache.blocks(dst2[:2]) == before2, "skipped blocks were written"
    assert cache.blocks(dst2[2:]) == cache.blocks(src[2:])
    # the same with a partial tail in the range (the blocks sent cover it):
    # 15 skipped blocks of 16 tokens leave exactly the last block to write
    tail = toks + list(range(7, 7 + 88))
    assert lookup(sched, tail, CHUNK, "n5l", want=1) == 1
    dst5 = list(range(cache.nb - 2 * bpc, cache.nb - bpc)) + [1 + bpc, 2 + bpc, 3 + bpc, 4 + bpc, 5 + bpc, 6 + bpc]
    cache.fill(dst5[:bpc], 123)
    before5 = cache.blocks(dst5[:bpc - 1])
    assert retrieve(s, c, 31, key_of(tail, 0, len(tail), "n5l"), dst5, skip=15 * cache.bs)
    assert cache.blocks(dst5[:bpc - 1]) == before5, "skipped blocks were written"
    assert cache.blocks([dst5[bpc - 1]]) == cache.blocks([src[bpc - 1]]), "the block after the skipped ones"
    # a STORE whose middle chunk has a null block: that chunk's bytes do not
    # exist, so it alone is skipped; the chunks around it are stored
    toks3 = list(range(80000, 80000 + 3 * CHUNK))
    src3 = list(range(1, 1 + 3 * bpc))
    src3[bpc + 4] = null
    assert store(s, c, 31, key_of(toks3, 0, 3 * CHUNK, "n3"), src3) is True
    assert lookup(sched, toks3, 3 * CHUNK, "n3l", want=1) == 1, "the prefix stops at the skipped chunk"
    dst3 = list(range(cache.nb - bpc, cache.nb))
    assert retrieve(s, c, 31, key_of(toks3, 0, CHUNK, "n3l"), dst3)
    assert cache.blocks(dst3) == cache.blocks(src3[:bpc])
    assert lookup(sched, toks3, 3 * CHUNK, "n4l", want=1) == 1
    # the chunk after the null one (its own copy: published a moment after the first's)
    wait_for(lambda: retrieve(s, c, 31, key_of(toks3, 2 * CHUNK, 3 * CHUNK, "n4l"), dst3), 10.0,
             what="the chunk after the null one")
    assert cache.blocks(dst3) == cache.blocks(src3[2 * bpc:])
    assert retrieve(s, c, 31, key_of(toks3, CHUNK, 2 * CHUNK, "n4l"), dst3) is False
    assert fake_errors(s) == [], s.log()


def test_tp2_two_workers(gpu_lmcd, clients):  # noqa: F811
    s = gpu_lmcd(devices=2)
    sched = clients(s.url, timeout=30.0)
    workers = []
    for rank in range(2):
        c = clients(s.url, timeout=60.0)
        cache = Cache("fa_nhd", "bf16", nh=2, dev=rank, seed=10 + rank)
        register(c, 40 + rank, cache, world_size=2)
        workers.append((c, cache))
    bpc = CHUNK // 16
    toks = list(range(600, 600 + 2 * CHUNK))
    src = list(range(1, 1 + 2 * bpc))
    dst = list(range(80 - 2 * bpc, 80))
    for rank, (c, cache) in enumerate(workers):
        assert store(s, c, 40 + rank, key_of(toks, 0, 2 * CHUNK, "tp", world_size=2, worker_id=rank), src)
    assert lookup(sched, toks, 2 * CHUNK, "tpl", tp=2, want=2) == 2
    for rank, (c, cache) in enumerate(workers):
        assert retrieve(s, c, 40 + rank, key_of(toks, 0, 2 * CHUNK, "tpl", world_size=2, worker_id=rank), dst)
        assert cache.blocks(dst) == cache.blocks(src), f"rank {rank}"
    assert workers[0][1].blocks(src) != workers[1][1].blocks(src), "the ranks hold different shards"
    # stopping with both registrations alive closes every mapping, stream and event
    s.stop()
    assert "fakecuda: leak" not in s.log(), s.log()
    assert fake_errors(s) == [], s.log()


def test_reregister_unregister_and_clean_shutdown(gpu_lmcd, clients):  # noqa: F811
    s = gpu_lmcd()
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    old = Cache("mla", "bf16", seed=3)
    register(c, 51, old)
    bpc = CHUNK // old.bs
    toks = list(range(900, 900 + CHUNK))
    src = list(range(1, 1 + bpc))
    assert store(s, c, 51, key_of(toks, 0, CHUNK, "rr"), src)
    # the worker restarts with a new cache: re-registering replaces the mappings
    new = Cache("mla", "bf16", seed=4)
    register(c, 51, new)
    register(c, 51, new)  # twice: the same handle must open again after the replace
    assert lookup(sched, toks, CHUNK, "rrl", want=1) == 1
    dst = list(range(new.nb - bpc, new.nb))
    assert retrieve(s, c, 51, key_of(toks, 0, CHUNK, "rrl"), dst)
    assert new.blocks(dst) == old.blocks(src)
    assert c.call("unregister_kv_cache", 51) is None
    # after UNREGISTER a GPU request of that instance is refused (left unanswered, logged)
    uid = c.submit("store", key_of(toks, 0, CHUNK, "after"), 51, [src], bytes(64))
    with pytest.raises(TimeoutError):
        c.wait_frames(uid, 1.0)
    s.stop()
    log = s.log()
    assert "fakecuda: leak" not in log, log
    assert fake_errors(s) == [], log


def test_incremental_stores_and_ranges_not_at_zero(gpu_lmcd, clients):  # noqa: F811
    """vLLM stores a request's chunks as they fill: a range that is partly
    cached already, and a range that starts past token 0 with only its own
    block ids."""
    s = gpu_lmcd()
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("fi_nhd", "fp8", layers=2, nb=200)
    register(c, 61, cache)
    bpc = CHUNK // cache.bs
    toks = list(range(1200, 1200 + 4 * CHUNK))
    src = list(range(1, 1 + 4 * bpc))
    assert store(s, c, 61, key_of(toks, 0, CHUNK, "i1"), src[:bpc])
    assert store(s, c, 61, key_of(toks, 0, 3 * CHUNK, "i2"), src[:3 * bpc])
    assert store(s, c, 61, key_of(toks, 3 * CHUNK, 4 * CHUNK, "i3"), src[3 * bpc:])
    assert lookup(sched, toks, 4 * CHUNK, "il", want=4) == 4
    dst = list(range(cache.nb - 4 * bpc, cache.nb))
    assert retrieve(s, c, 61, key_of(toks, 0, 4 * CHUNK, "il"), dst)
    for k in range(4):
        assert cache.blocks(dst[k * bpc:(k + 1) * bpc]) == cache.blocks(src[k * bpc:(k + 1) * bpc]), f"chunk {k}"
    # a retrieve of a range past token 0, with that range's blocks only
    assert lookup(sched, toks, 4 * CHUNK, "il2", want=4) == 4
    dst2 = list(range(cache.nb - 6 * bpc, cache.nb - 4 * bpc))
    assert retrieve(s, c, 61, key_of(toks, 2 * CHUNK, 4 * CHUNK, "il2"), dst2)
    assert cache.blocks(dst2) == cache.blocks(src[2 * bpc:])
    assert fake_errors(s) == [], s.log()


def pinned_bytes(s):
    with urllib.request.urlopen(s.http + "/status", timeout=10) as r:
        return json.loads(r.read())["gpu"]["l1_pinning"]["pinned_bytes"]


def event_done(handle):
    pid, fd = struct.unpack_from("<II", handle, 8)
    with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
        rec, done = struct.unpack_from("<QQ", f.read(24), 8)
    return done >= rec


def test_reply_at_once_publish_on_completion(gpu_lmcd, clients):  # noqa: F811
    """STORE and RETRIEVE answer (event, true) before the copy ran (it waits
    for the worker's event); a STORE is published, a RETRIEVE's blocks
    written, only once the copy completed."""
    s = gpu_lmcd()
    c, sched = clients(s.url, timeout=30.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=2)
    register(c, 71, cache)
    bpc = CHUNK // cache.bs
    toks = list(range(5000, 5000 + CHUNK))
    src = list(range(1, 1 + bpc))
    ev = Event()
    ev.record()
    handle, ok = c.call("store", key_of(toks, 0, CHUNK, "a1"), 71, [src], ev.handle, timeout=10.0)
    assert ok is True and not event_done(handle), "the reply came before the copy"
    assert lookup(sched, toks, CHUNK, "a1l") == 0, "published before the copy completed"
    cache.fill(src, 99)  # the worker's last writes, before its event completes
    ev.complete()
    wait_reply_event(s, handle)
    wait_for(lambda: lookup(sched, toks, CHUNK, f"a2l{time.monotonic()}", want=1) == 1, 10.0, what="publication")
    assert lookup(sched, toks, CHUNK, "a3l", want=1) == 1
    dst = list(range(cache.nb - bpc, cache.nb))
    before = cache.blocks(dst)
    ev.record()
    handle, ok = c.call("retrieve", key_of(toks, 0, CHUNK, "a3l"), 71, [dst], ev.handle, 0, timeout=10.0)
    assert ok is True and not event_done(handle)
    time.sleep(0.1)
    assert cache.blocks(dst) == before, "written before the worker's event completed"
    ev.complete()
    wait_reply_event(s, handle)
    assert cache.blocks(dst) == cache.blocks(src)
    ev.close()
    assert fake_errors(s) == [], s.log()


def test_copy_queue_back_pressure_loop_stays_responsive(gpu_lmcd, clients):  # noqa: F811
    """A worker whose copies cannot start (its event is not complete) fills
    its queue: past the bound its STOREs wait (in a pool thread), while the
    server keeps answering everyone else; completing the event drains all."""
    s = gpu_lmcd()
    c, other = clients(s.url, timeout=30.0), clients(s.url, timeout=5.0)
    cache = Cache("fa_nhd", "bf16", layers=1)
    register(c, 81, cache)
    bpc = CHUNK // cache.bs
    # L1 pinned where these objects land (the lazy L1 commits 16 MiB past
    # a first store): else each copy also holds a bounce slot, 16 of them,
    # and the 17th STORE waits for a slot instead of the queue bound tested
    assert store(s, c, 81, key_of(list(range(7, 7 + CHUNK)), 0, CHUNK, "warm"), list(range(1, 1 + bpc)))
    wait_for(lambda: pinned_bytes(s) >= 16 << 20, 20.0, what="the first 16 MiB of L1 pinned")
    ev = Event()
    ev.record()
    n = 40  # > TRANSFER_QUEUE_DEPTH (32)
    uids = [c.submit("store", key_of(list(range(10 ** 6 + i * CHUNK, 10 ** 6 + (i + 1) * CHUNK)), 0, CHUNK,
                                     f"bp{i}"), 81, [list(range(1, 1 + bpc))], ev.handle) for i in range(n)]
    def arrived(until):
        while time.monotonic() < until and len([u for u in uids if u in c._replies]) < n:
            c._pump(min(until, time.monotonic() + 0.05))
            if len([u for u in uids if u in c._replies]) >= 32 and until - time.monotonic() > 0.5:
                until = time.monotonic() + 0.5  # then a little longer: no 33rd may come
        return [u for u in uids if u in c._replies]

    early = arrived(time.monotonic() + 20)
    assert len(early) == 32, f"{len(early)} of {n} replies before the event completed (the queue holds 32)"
    assert other.noop() == "OK" and other.get_chunk_size() == CHUNK
    assert lookup(other, list(range(10 ** 6, 10 ** 6 + CHUNK)), CHUNK, "bpl") == 0
    ev.complete()
    got = [c.wait(u, 30.0) for u in uids]
    assert all(ok is True for _, ok in got)
    for h, _ in got:
        wait_reply_event(s, h)
    sched = clients(s.url, timeout=30.0)
    wait_for(lambda: lookup(sched, list(range(10 ** 6 + (n - 1) * CHUNK, 10 ** 6 + n * CHUNK)), CHUNK,
                            f"bpz{time.monotonic()}") == 1, 10.0, what="the last store published")
    ev.close()
    assert fake_errors(s) == [], s.log()


def test_refused_registrations_and_bad_block_ids(gpu_lmcd, clients):  # noqa: F811
    """What lmcd cannot serve is refused with one ERROR line naming why
    (the worker's registration times out), without a mapping left open or
    a kernel ever touching memory outside the worker's allocation; the
    server keeps serving, and a STORE with a block id outside the cache
    answers (event, false) and publishes nothing."""
    s = gpu_lmcd()
    c = clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=2)
    small = bytearray(cache.block.torch_handle())
    struct.pack_into("<Q", small, 2 + 16, 4096)  # the handle maps a 4 KiB allocation; the pickle claims more
    cases = {
        91: (dict(storage_handle=bytes(small)), "reaches past the shared allocation"),
        92: (dict(storage_handle=b"\x01e" + bytes(64)), "expandable"),
        93: (dict(storage_handle=b"\x01c" + b"notfake!" + bytes(56)), "cuIpcOpenMemHandle"),
        94: (dict(device_uuid="GPU-12345678-0000-4000-8000-000000000000"), "not visible"),
        95: (dict(shape=(80, 16, 4, 64), stride=(4096, 256, 64, 1)), "unknown paged layout"),
    }
    for iid, (forge, why) in cases.items():
        uid = c.submit("register_kv_cache", iid, cache.wrappers(**forge), "m", 1, "vllm", cache.hints(), [])
        with pytest.raises(TimeoutError):
            c.wait_frames(uid, 1.0)
        wait_for(lambda: any(f"instance {iid}" in ln and "ERROR" in ln for ln in s.log().splitlines()), 10.0,
                 what=f"the ERROR line for {iid}")
        lines = [ln for ln in s.log().splitlines() if f"instance {iid} " in ln and "ERROR" in ln]
        assert len(lines) == 1 and why in lines[0], (why, lines)
    # the forged handle is the only driver error; the server is healthy
    errs = fake_errors(s)
    assert len(errs) == 1 and "cuIpcOpenMemHandle" in errs[0] and "INVALID_HANDLE" in errs[0], errs
    register(c, 96, cache)
    bpc = CHUNK // cache.bs
    toks = list(range(3000, 3000 + CHUNK))
    bad = list(range(1, 1 + bpc))
    bad[5] = cache.nb + 3
    assert store(s, c, 96, key_of(toks, 0, CHUNK, "bb"), bad) is False
    sched = clients(s.url, timeout=30.0)
    assert lookup(sched, toks, CHUNK, "bbl") == 0
    assert store(s, c, 96, key_of(toks, 0, CHUNK, "bb2"), list(range(1, 1 + bpc))) is True
    assert lookup(sched, toks, CHUNK, "bbl2", want=1) == 1, "the dropped reservation did not block a new store"
    s.stop()
    assert "fakecuda: leak" not in s.log(), s.log()
    assert len(fake_errors(s)) == 1, fake_errors(s)


def test_unregister_waiting_for_copies_does_not_block_the_loop(gpu_lmcd, clients):  # noqa: F811
    """UNREGISTER waits out the worker's queued copies; it does so on the
    affinity pool (LMCache answers registrations inline), so while a copy is
    held by an incomplete event everyone else is still served."""
    s = gpu_lmcd()
    c, other = clients(s.url, timeout=30.0), clients(s.url, timeout=5.0)
    cache = Cache("fa_nhd", "bf16", layers=1)
    register(c, 91, cache)
    bpc = CHUNK // cache.bs
    ev = Event()
    ev.record()
    toks = list(range(2 * 10 ** 6, 2 * 10 ** 6 + CHUNK))
    st = c.submit("store", key_of(toks, 0, CHUNK, "unreg"), 91, [list(range(1, 1 + bpc))], ev.handle)
    h, ok = c.wait(st, 20.0)  # replied at once; the copy waits for the event
    assert ok is True
    un = c.submit("unregister_kv_cache", 91)
    for _ in range(5):  # the loop answers while the UNREGISTER waits
        assert other.noop() == "OK" and other.get_chunk_size() == CHUNK
    c._pump(time.monotonic() + 0.5)
    assert un not in c._replies, "UNREGISTER answered while its worker's copy still waited"
    ev.complete()
    assert c.wait(un, 30.0) is None
    assert len(h) == 64
    ev.close()
    s.stop()
    assert "fakecuda: leak" not in s.log(), s.log()
    assert fake_errors(s) == [], s.log()
