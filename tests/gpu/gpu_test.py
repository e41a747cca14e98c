"""lmcd's GPU path against real CUDA IPC clients (run by tests/gpu/run.sh).

Creates vLLM-shaped paged KV caches with PyTorch, exports each layer with
UntypedStorage._share_cuda_(), pickles one wrapper per layer exactly as
LMCache does (class lmcache.v1.multiprocess.custom_types.CudaIPCWrapper,
the six state keys of spec 10), drives lmcd over ZeroMQ (ctypes on the
carried libzmq: no pyzmq on the GPU host), stores, looks up, retrieves into
other blocks and compares bit for bit. Cases: bf16 and fp8 (uint8),
flash-attention NHD and MLA, one worker and two (TP 2) on one GPU, and a
mixed run where a GPU worker stores and an engine-driven worker retrieves.
Prints store/retrieve GB/s against PyTorch's own D2H/H2D copy of the same
bytes into pinned memory, measured in the same run, for both copy paths
(--gpu-copy-path direct: the kernel writes/reads mapped pinned L1; staging:
the kernel works on device staging and one DMA moves each object), and says
which is faster for each op: the result that settles lmcd's default
(docs/gpu.md).

--dry-run (no GPU): the wire code over ctypes (GET_CHUNK_SIZE, the
engine-driven round trip with torch CPU tensors, a REGISTER_KV_CACHE that a
driverless lmcd leaves unanswered), so the script is exercised before any
GPU time is spent. Exit status 0 only when every check passed.
"""
import argparse
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", "..", "clients", "python"))  # in the repo; the bundle has a copy
import ctzmq  # noqa: E402

sys.modules["zmq"] = ctzmq  # lmcd_client imports zmq: give it the ctypes one
import msgpack  # noqa: E402
from lmcd_client import Client, Segment, ed_payload, make_key  # noqa: E402

CHUNK = 256
FAILS = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILS.append(what)


# ---------------------------------------------------------------- the wrapper LMCache pickles

from ipc_wrapper import CudaIPCWrapper, torch_dtype  # noqa: E402  (shared with tests/e2e/test_gpu_emulated.py)


def wrap(tensor):
    import torch
    return CudaIPCWrapper(tensor.untyped_storage()._share_cuda_(), tensor.dtype, tensor.shape, tensor.stride(),
                          tensor.storage_offset(), str(torch.cuda.get_device_properties(tensor.device.index).uuid))


def ext(tensor):
    return msgpack.ExtType(1, pickle.dumps(wrap(tensor)))


# ---------------------------------------------------------------- lmcd

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lmcd_env():
    env = dict(os.environ)
    if os.environ.get("LMCD_LD_LIBRARY_PATH"):  # the bundle's libraries, for lmcd only
        env["LD_LIBRARY_PATH"] = os.environ["LMCD_LD_LIBRARY_PATH"]
    return env


def start_lmcd(lmcd, extra=(), l1_gb=4):
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="lmcd-gpu-", suffix=".log", delete=False)
    args = [lmcd, "--host", "127.0.0.1", "--port", str(port), "--no-http", "--l1-size-gb", str(l1_gb),
            "--shm-name", f"{os.environ.get('LMCD_TEST_SHM_PREFIX', '')}lmcd_gpu_test_{os.getpid()}_{port}", *extra]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=lmcd_env())
    url = f"tcp://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with Client(url, timeout=1.0) as c:
                if c.get_chunk_size() == CHUNK:
                    return proc, url, log.name
        except TimeoutError:
            pass
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"lmcd did not start; log: {open(log.name).read()}")


def stop_lmcd(proc):
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- dry run (no GPU)

def dry_run(lmcd):
    # no torch here: the dry run runs where the tests do (Debian's python3);
    # the bytes of a bf16 chunk are any bytes, and the dtype pickles the same
    proc, url, log = start_lmcd(lmcd)
    try:
        c = Client(url, timeout=5.0)
        check(c.get_chunk_size() == CHUNK, "GET_CHUNK_SIZE over ctypes libzmq")
        # engine-driven round trip with CPU tensors: [2, L, T, H] bf16 chunks
        layers, hidden = 4, 64
        reg = c.register_ed(ed_payload(11, num_layers=layers, hidden_dim_size=hidden))
        seg = Segment(reg["shm_name"])
        try:
            toks = list(range(100, 100 + 2 * CHUNK))
            key = make_key("m", toks, 0, 2 * CHUNK, "dry", worker_id=0)
            ctx = c.prepare_store(key, 11)["context"]
            chunks = {}
            for idx, slot in zip(ctx["chunk_indices"], ctx["slots"]):
                chunks[idx] = os.urandom(2 * layers * CHUNK * hidden * 2)  # [2, L, T, H] bf16
                check(len(chunks[idx]) == slot["length"], f"slot {idx} holds one [2,L,T,H] bf16 chunk")
                seg.write(slot["offset"], chunks[idx])
            check(c.commit_store(key, 11) is True, "COMMIT_STORE")
            sched = Client(url, timeout=5.0)
            sched.lookup(make_key("m", toks, 0, 2 * CHUNK, "dry"))
            check(sched.poll_prefetch_status("dry") == 2, "LOOKUP finds both chunks")
            r = c.prepare_retrieve(key, 11)
            got = [seg.read(s["offset"], s["length"]) for s in r["context"]["slots"]]
            check(r["success"] and got == [chunks[0], chunks[1]], "engine-driven bytes read back bit for bit")
            c.commit_retrieve(key, 11)
            sched.close()
        finally:
            seg.close()
        # a GPU registration on a driverless lmcd: unanswered (spec 9.3), one log line
        w = types.SimpleNamespace(handle=(0, b"\x02c" + bytes(64), 1 << 20, 0, b"", 0, bytes(64), False))
        fake = CudaIPCWrapper(w.handle, torch_dtype("bfloat16"), (2, 16, 16, 8, 128),
                              (16 * 16 * 8 * 128, 16 * 8 * 128, 8 * 128, 128, 1), 0,
                              "00000000-0000-0000-0000-000000000000")
        uid = c.submit("register_kv_cache", 12, [msgpack.ExtType(1, pickle.dumps(fake))], "m", 1, "vllm",
                       {"kv_layout": "NHD"}, [])
        try:
            c.wait_frames(uid, 1.5)
            check(False, "REGISTER_KV_CACHE without a GPU is left unanswered")
        except TimeoutError:
            check(True, "REGISTER_KV_CACHE without a GPU is left unanswered")
        time.sleep(0.2)
        text = open(log).read()
        check("instance 12" in text and "engine_driven" in text, "one log line names the worker and the fix")
        c.close()
        for path in ("direct", "staging"):
            out = subprocess.run([lmcd, "--gpu-copy-path", path, "--print-config"], capture_output=True, text=True,
                                 timeout=30, env=lmcd_env())
            check(out.returncode == 0 and f'"gpu_copy_path": "{path}"' in out.stdout.replace('":"', '": "'),
                  f"lmcd accepts --gpu-copy-path {path}")
    finally:
        stop_lmcd(proc)
        os.unlink(log)


# ---------------------------------------------------------------- GPU run

def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def baseline(nbytes):
    """PyTorch's own D2H and H2D of nbytes into/from pinned memory."""
    import torch
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host.copy_(dev, non_blocking=True)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    host.copy_(dev, non_blocking=True)
    torch.cuda.synchronize()
    d2h = time.perf_counter() - t
    t = time.perf_counter()
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    h2d = time.perf_counter() - t
    return gbps(nbytes, d2h), gbps(nbytes, h2d)


def make_cache(kind, dtype, layers, nb, bs, nh, hs):
    import torch
    caches = []
    for _ in range(layers):
        shape = (2, nb, bs, nh, hs) if kind == "fa" else (nb, bs, hs)
        if dtype == "fp8":
            t = torch.randint(0, 256, shape, dtype=torch.uint8, device="cuda")
        else:
            t = torch.randn(shape, device="cuda").to(torch.bfloat16)
        caches.append(t)
    return caches


def event_done(reply):
    import torch
    handle, ok = reply
    ev = torch.cuda.Event.from_ipc_handle(torch.cuda.current_device(), handle)
    ev.synchronize()
    return ok


def client_event():
    import torch
    ev = torch.cuda.Event(interprocess=True)
    ev.record()
    return ev, ev.ipc_handle()


def blocks_view(cache, kind, blocks):
    import torch
    idx = torch.tensor(blocks, device=cache.device)
    return cache[:, idx] if kind == "fa" else cache[idx]


def lookup_published(sched, key, want, tp=1, timeout=10.0):
    """LOOKUP hits, repeated until `want`: lmcd publishes a STORE from its
    completion thread just after the copy completed, which may trail the
    moment the worker saw the reply event complete (docs/gpu.md)."""
    deadline = time.monotonic() + timeout
    while True:
        sched.lookup(key, tp_size=tp)
        hits = sched.poll_prefetch_status(key["request_id"], timeout=30.0)
        if hits >= want or time.monotonic() > deadline:
            return hits
        time.sleep(0.02)


def gpu_case(url, kind, dtype, tp, iid_base, model):
    import torch
    layers, nb, bs, nh, hs = (8, 64, 16, 8, 128) if kind == "fa" else (8, 64, 16, 1, 576)
    nch = 4
    per_chunk = CHUNK // bs
    name = f"{kind}/{dtype}/tp{tp}"
    workers = []
    for rank in range(tp):
        c = Client(url, timeout=60.0)
        caches = make_cache(kind, dtype, layers, nb, bs, nh // tp if kind == "fa" else nh, hs)
        workers.append((c, caches))
        reply = c.call("register_kv_cache", iid_base + rank, [ext(t) for t in caches], model, tp, "vllm",
                       {"kv_layout": "NHD"}, [])
        check(reply is None, f"{name} rank {rank}: REGISTER_KV_CACHE answered None")
    toks = list(range(1000 + iid_base, 1000 + iid_base + nch * CHUNK))
    src_blocks = list(range(1, 1 + nch * per_chunk))           # block 0 is the null block
    dst_blocks = list(range(nb - nch * per_chunk, nb))
    nbytes = 0
    t0 = time.perf_counter()
    for rank, (c, caches) in enumerate(workers):
        torch.cuda.synchronize()
        _ev, h = client_event()
        key = make_key(model, toks, 0, nch * CHUNK, f"s{iid_base}", world_size=tp, worker_id=rank)
        ok = event_done(c.call("store", key, iid_base + rank, [src_blocks], h))
        check(ok, f"{name} rank {rank}: STORE succeeded")
        nbytes += sum(blocks_view(t, kind, src_blocks).numel() * t.element_size() for t in caches)
    store_s = time.perf_counter() - t0
    sched = Client(url, timeout=30.0)
    hits = lookup_published(sched, make_key(model, toks, 0, nch * CHUNK, f"r{iid_base}", world_size=tp), nch, tp)
    check(hits == nch, f"{name}: LOOKUP finds {nch} chunks (got {hits})")
    t0 = time.perf_counter()
    for rank, (c, caches) in enumerate(workers):
        _ev, h = client_event()
        key = make_key(model, toks, 0, nch * CHUNK, f"r{iid_base}", world_size=tp, worker_id=rank)
        ok = event_done(c.call("retrieve", key, iid_base + rank, [dst_blocks], h, 0))
        check(ok, f"{name} rank {rank}: RETRIEVE succeeded")
    retrieve_s = time.perf_counter() - t0
    for rank, (c, caches) in enumerate(workers):
        same = all(torch.equal(blocks_view(t, kind, src_blocks).view(torch.uint8).cpu(),
                               blocks_view(t, kind, dst_blocks).view(torch.uint8).cpu()) for t in caches)
        check(same, f"{name} rank {rank}: retrieved blocks equal stored blocks bit for bit")
    d2h, h2d = baseline(nbytes)
    s, r = gbps(nbytes, store_s), gbps(nbytes, retrieve_s)
    print(f"perf {name}: {nbytes / 1e6:.1f} MB  store {s:.2f} GB/s ({s / d2h:.2f}x torch D2H {d2h:.2f})  "
          f"retrieve {r:.2f} GB/s ({r / h2d:.2f}x torch H2D {h2d:.2f})", flush=True)
    for rank, (c, _) in enumerate(workers):
        c.call("unregister_kv_cache", iid_base + rank)
        c.close()
    sched.close()
    return toks, workers


def mixed_case(url):
    """A GPU worker stores; an engine-driven worker of the same model reads
    the chunk and finds the spec 7.4 layout of the GPU blocks."""
    import torch
    layers, nb, bs, nh, hs = 4, 32, 16, 8, 128
    per_chunk = CHUNK // bs
    c = Client(url, timeout=60.0)
    caches = make_cache("fa", "bf16", layers, nb, bs, nh, hs)
    check(c.call("register_kv_cache", 900, [ext(t) for t in caches], "mix", 1, "vllm", {"kv_layout": "NHD"},
                 []) is None, "mixed: GPU worker registered")
    toks = list(range(7, 7 + CHUNK))
    blocks = list(range(1, 1 + per_chunk))
    _ev, h = client_event()
    ok = event_done(c.call("store", make_key("mix", toks, 0, CHUNK, "mx", worker_id=0), 900, [blocks], h))
    check(ok, "mixed: GPU STORE succeeded")
    ed = Client(url, timeout=30.0)
    reg = ed.register_ed(ed_payload(901, model="mix", block_size=bs, num_layers=layers, hidden_dim_size=nh * hs))
    seg = Segment(reg["shm_name"])
    try:
        sched = Client(url, timeout=30.0)
        check(lookup_published(sched, make_key("mix", toks, 0, CHUNK, "mxl"), 1) == 1,
              "mixed: LOOKUP finds the GPU-stored chunk")
        r = ed.prepare_retrieve(make_key("mix", toks, 0, CHUNK, "mxl", worker_id=0), 901)
        check(r["success"], "mixed: engine-driven PREPARE_RETRIEVE hits")
        if r["success"]:
            slot = r["context"]["slots"][0]
            got = seg.read(slot["offset"], slot["length"])
            idx = torch.tensor(blocks, device="cuda")
            want = torch.stack([t[:, idx].reshape(2, CHUNK, nh * hs) for t in caches], dim=1)  # [2, L, T, H]
            check(got == want.contiguous().view(torch.uint8).cpu().numpy().tobytes(),
                  "mixed: engine-driven worker reads the GPU worker's bytes in the spec 7.4 layout")
        ed.commit_retrieve(make_key("mix", toks, 0, CHUNK, "mxl", worker_id=0), 901)
        sched.close()
    finally:
        seg.close()
    c.call("unregister_kv_cache", 900)
    c.close()
    ed.close()


def wait_log(log, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in open(log).read():
            return True
        time.sleep(0.1)
    return False


def perf_path(lmcd, path, rounds=3, nch=16):
    """One lmcd with --gpu-copy-path `path` and a pre-faulted 8 GB L1,
    pinned whole before timing (the log says when); STORE then RETRIEVE of
    nch 32 MiB chunks (32 layers, bf16 flash-attention NHD), best of
    `rounds`, bytes checked. Returns (store GB/s, retrieve GB/s, bytes)."""
    import torch
    layers, nb, bs, nh, hs = 32, 1024, 16, 8, 128
    per_chunk = CHUNK // bs
    proc, url, log = start_lmcd(lmcd, ["--gpu-copy-path", path, "--no-l1-use-lazy"], l1_gb=8)
    best_s = best_r = 0.0
    nbytes = 0
    try:
        c = Client(url, timeout=120.0)
        caches = make_cache("fa", "bf16", layers, nb, bs, nh, hs)
        check(c.call("register_kv_cache", 700, [ext(t) for t in caches], f"perf-{path}", 1, "vllm",
                     {"kv_layout": "NHD"}, []) is None, f"perf {path}: registered")
        check(wait_log(log, "pinning L1: done", 120), f"perf {path}: L1 pinned before timing")
        src = list(range(1, 1 + nch * per_chunk))
        dst = list(range(nb - nch * per_chunk, nb))
        nbytes = sum(blocks_view(t, "fa", src).numel() * t.element_size() for t in caches)
        sched = Client(url, timeout=30.0)
        for rnd in range(rounds):
            toks = list(range(10 ** 6 * (rnd + 1), 10 ** 6 * (rnd + 1) + nch * CHUNK))
            torch.cuda.synchronize()
            _ev, h = client_event()
            t0 = time.perf_counter()
            ok = event_done(c.call("store", make_key(f"perf-{path}", toks, 0, nch * CHUNK, f"ps{rnd}", worker_id=0),
                                   700, [src], h))
            st = time.perf_counter() - t0
            check(ok, f"perf {path} round {rnd}: STORE")
            hits = lookup_published(sched, make_key(f"perf-{path}", toks, 0, nch * CHUNK, f"pr{rnd}"), nch)
            check(hits == nch, f"perf {path} round {rnd}: LOOKUP {hits}/{nch}")
            didx = torch.tensor(dst, device="cuda")
            for t in caches:  # so a retrieve that moved nothing cannot pass
                t[:, didx] = 0
            torch.cuda.synchronize()
            _ev, h = client_event()
            t0 = time.perf_counter()
            ok = event_done(c.call("retrieve", make_key(f"perf-{path}", toks, 0, nch * CHUNK, f"pr{rnd}", worker_id=0),
                                   700, [dst], h, 0))
            rt = time.perf_counter() - t0
            check(ok, f"perf {path} round {rnd}: RETRIEVE")
            same = all(torch.equal(blocks_view(t, "fa", src), blocks_view(t, "fa", dst)) for t in caches)
            check(same, f"perf {path} round {rnd}: retrieved blocks equal stored blocks bit for bit")
            best_s, best_r = max(best_s, gbps(nbytes, st)), max(best_r, gbps(nbytes, rt))
        c.call("unregister_kv_cache", 700)
        c.close()
        sched.close()
        del caches
        torch.cuda.empty_cache()
    finally:
        stop_lmcd(proc)
        tail = open(log).read()[-2000:]
        os.unlink(log)
    print(f"perf path {path}: {nbytes / 1e6:.0f} MB per op, store {best_s:.2f} GB/s, retrieve {best_r:.2f} GB/s",
          flush=True)
    if not best_s:
        print(tail)
    return best_s, best_r, nbytes


def gpu_run(lmcd):
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to PyTorch")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    proc, url, log = start_lmcd(lmcd)
    try:
        iid = 100
        for kind, dtype, tp in (("fa", "bf16", 1), ("fa", "fp8", 1), ("mla", "bf16", 1), ("mla", "fp8", 1),
                                ("fa", "bf16", 2)):
            gpu_case(url, kind, dtype, tp, iid, f"model-{kind}-{dtype}-{tp}")
            iid += 10
        mixed_case(url)
    finally:
        stop_lmcd(proc)
        print("---- lmcd log ----")
        print(open(log).read()[-6000:])
        os.unlink(log)
    # The copy path: both measured in this run against PyTorch's own copy.
    res = {p: perf_path(lmcd, p) for p in ("direct", "staging")}
    d2h, h2d = baseline(res["direct"][2])
    for p, (st, rt, _) in res.items():
        print(f"perf path {p}: store {st / d2h:.2f}x torch D2H ({d2h:.2f} GB/s), retrieve {rt / h2d:.2f}x torch H2D "
              f"({h2d:.2f} GB/s)", flush=True)
    fs = max(res, key=lambda p: res[p][0])
    fr = max(res, key=lambda p: res[p][1])
    print(f"faster copy path: store {fs}, retrieve {fr} (lmcd's default --gpu-copy-path auto is direct; "
          f"docs/gpu.md)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lmcd", default=os.path.join(HERE, "lmcd"))
    ap.add_argument("--dry-run", action="store_true", help="no GPU: exercise the wire code only")
    a = ap.parse_args()
    if not os.access(a.lmcd, os.X_OK):
        raise SystemExit(f"no lmcd binary at {a.lmcd}")
    if a.dry_run:
        dry_run(a.lmcd)
    else:
        gpu_run(a.lmcd)
    print(f"{'PASS' if not FAILS else 'FAIL'}: {len(FAILS)} failed check(s)")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
