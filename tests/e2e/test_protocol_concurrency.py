"""Many clients at once, per-client FIFO of data requests, ipc:// transport."""
import os
import threading
import time

from lmcd_client import Client, make_key, pack, unpack
from test_protocol import clients, srv  # noqa: F401

CHUNK = 256


def mixed_ops(i, n):
    """n (op, args, expected reply) tuples, varied per client i."""
    ops = []
    for j in range(n):
        k = (i * 7 + j) % 6
        if k == 0:
            ops.append(("noop", (), "OK"))
        elif k == 1:
            ops.append(("get_chunk_size", (), 256))
        elif k == 2:
            ops.append(("ping", (None if j % 2 else i,), True))
        elif k == 3:
            ops.append(("query_prefetch_status", (f"unknown-{i}-{j}",), 0))
        elif k == 4:
            ops.append(("get_experimental", (), []))
        else:
            ops.append(("lookup", (make_key("m", [i, j] * 300, 0, 512, f"c{i}-{j}"), 1), None))
    return ops


def run_threads(targets, bound):
    errors = []

    def wrap(fn, *a):
        try:
            fn(*a)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + bound
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"clients still running after {bound}s"
    if errors:
        raise errors[0]


def test_16_clients_200_requests_in_flight(lmcd_factory):
    s = lmcd_factory(["--l1-size-gb", "0.1", "--max-workers", "4"])
    n_clients, n_req, window = 16, 200, 50
    done = []

    def client(i):
        with Client(s.url, timeout=20.0) as c:
            ops = mixed_ops(i, n_req)
            pending = {}
            for op, args, want in ops:
                pending[c.submit(op, *args)] = (op, want)
                if len(pending) >= window:
                    uid = next(iter(pending))
                    op_, want_ = pending.pop(uid)
                    got = c.wait(uid)
                    assert got == want_, f"client {i} uid {uid} {op_}: {got!r}"
            for uid, (op_, want_) in pending.items():
                got = c.wait(uid)
                assert got == want_, f"client {i} uid {uid} {op_}: {got!r}"
            assert sorted(c.arrivals) == list(range(n_req)), "every uid answered exactly once"
            assert not c.stray, f"client {i} got replies for unknown uids"
            done.append(i)

    t0 = time.monotonic()
    run_threads([(client, i) for i in range(n_clients)], bound=60.0)
    assert sorted(done) == list(range(n_clients))
    assert time.monotonic() - t0 < 60.0
    assert s.proc.poll() is None


def test_data_requests_fifo_per_client(lmcd_factory):
    """Pipelined store->retrieve of the same key, never waiting in between:
    the affinity pool runs one client's data requests in order, so every
    retrieve sees its store, and replies come back in submission order."""
    s = lmcd_factory(["--l1-size-gb", "0.1", "--max-gpu-workers", "2", "--max-cpu-workers", "2"])
    n_clients, n_pairs = 4, 50

    def client(i):
        with Client(s.url, timeout=20.0) as c:
            uids, blobs = [], []
            for j in range(n_pairs):
                key = make_key("fifo", [i, j] * CHUNK, 0, CHUNK, f"f{i}-{j}", worker_id=0)
                blob = os.urandom(1024)
                blobs.append(blob)
                uids.append(c.submit_frames("lmcd.store_inline", [pack(key), blob]))
                uids.append(c.submit_frames("lmcd.retrieve_inline", [pack(key)]))
            for j in range(n_pairs):
                assert unpack(c.wait_frames(uids[2 * j])[1]) == 1
                frames = c.wait_frames(uids[2 * j + 1])
                assert unpack(frames[1]) == 1 and frames[2] == blobs[j], \
                    f"client {i}: retrieve {j} overtook its store"
            assert c.arrivals == uids, f"client {i}: replies out of submission order"

    run_threads([(client, i) for i in range(n_clients)], bound=60.0)
    assert s.proc.poll() is None


def test_ipc_host(lmcd_factory, tmp_path):
    path = os.path.join(str(tmp_path), "lmcd.sock")
    s = lmcd_factory(["--l1-size-gb", "0.1", "--host", f"ipc://{path}"])
    with Client(f"ipc://{path}", timeout=5.0) as c:
        assert c.get_chunk_size() == 256
        assert c.noop() == "OK"
        assert c.ping(3) is True
    assert s.proc.poll() is None


def test_clients_sharing_uids_are_kept_apart(srv):
    """Two DEALERs both use uid 0..N: replies go to the right one."""
    a = Client(srv.url, timeout=5.0)
    b = Client(srv.url, timeout=5.0)
    try:
        ua = [a.submit("query_prefetch_status", f"a{j}") for j in range(20)]
        ub = [b.submit("noop") for _ in range(20)]
        assert ua == ub == list(range(20))
        assert [a.wait(u) for u in ua] == [0] * 20
        assert [b.wait(u) for u in ub] == ["OK"] * 20
    finally:
        a.close()
        b.close()
