"""lmcd.retrieve_inline never sends another object's bytes (issue 11, item 2).

The reply's chunk frames point into L1 without a copy. A client that reads
its replies slower than --l1-read-ttl-seconds used to see its read locks
expire while ZeroMQ still held the frames; eviction or a forced clear then
gave the memory to new objects, and the frames went out carrying their bytes.
Here a slow reader (a DEALER that takes nothing off the wire until told)
asks for 1 MiB chunks with a 1 s read TTL, waits past the TTL while another
client clears the cache and floods L1 with other objects, then reads: every
byte of every chunk it gets must be the bytes stored under its key.
"""
import hashlib
import os
import time
import urllib.request

import zmq

from conftest import wait_for
from lmcd_client import Client, http_json, make_key, pack, unpack

MIB = 1 << 20
CHUNK_TOKENS = 256


def chunk_bytes(tag, i, size=MIB):
    """Deterministic content per (tag, chunk): a digest repeated, so a
    foreign object's bytes never match by accident."""
    seed = hashlib.sha256(f"{tag}/{i}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def key_for(tag, n_chunks):
    toks = [(hash(tag) + t) % 50000 for t in range(n_chunks * CHUNK_TOKENS)]
    return make_key("slow", toks, 0, n_chunks * CHUNK_TOKENS, f"r-{tag}", worker_id=0)


def slow_dealer(ctx, url):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 1)        # ZeroMQ takes (almost) nothing off the wire...
    s.setsockopt(zmq.RCVBUF, 4096)     # ...and the kernel buffers little
    s.connect(url)
    return s


def test_slow_inline_reader_past_the_read_ttl_gets_only_its_own_bytes(lmcd_factory):
    srv = lmcd_factory(["--l1-size-gb", "0.0625", "--l1-read-ttl-seconds", "1",
                        "--max-message-bytes", str(64 * MIB)])
    n_keys, per_key = 8, 4
    tags = [f"victim{k}" for k in range(n_keys)]
    with Client(srv.url, timeout=30) as w:
        for t in tags:
            assert w.store_inline(key_for(t, per_key), [chunk_bytes(t, i) for i in range(per_key)]) == per_key

    ctx = zmq.Context()
    slow = slow_dealer(ctx, srv.url)
    try:
        for uid, t in enumerate(tags):
            slow.send_multipart([pack(uid), pack("lmcd.retrieve_inline"), pack(key_for(t, per_key))])
        time.sleep(2.5)  # well past the 1 s read TTL; the replies wait in lmcd's ZeroMQ queue

        # pressure: a forced clear, then other objects filling L1 (evicting and reusing memory)
        req = urllib.request.Request(srv.http + "/clear-cache", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        with Client(srv.url, timeout=30) as w:
            for k in range(24):
                t = f"flood{k}"
                w.store_inline(key_for(t, per_key), [chunk_bytes(t, i) for i in range(per_key)])

        got_chunks = wrong = 0
        deadline = time.monotonic() + 60
        replies = {}
        while len(replies) < n_keys and time.monotonic() < deadline:
            if not slow.poll(1000, zmq.POLLIN):
                continue
            frames = slow.recv_multipart()
            uid = unpack(frames[0])
            n = unpack(frames[2])
            chunks = frames[3:]
            assert n == len(chunks), (n, len(chunks))
            replies[uid] = chunks
        assert len(replies) == n_keys, f"only {len(replies)} of {n_keys} replies arrived"
        for uid, chunks in replies.items():
            t = tags[uid]
            for i, c in enumerate(chunks):
                got_chunks += 1
                if bytes(c) != chunk_bytes(t, i):
                    wrong += 1
        assert wrong == 0, f"{wrong} of {got_chunks} chunks carried another object's bytes"
        assert got_chunks > 0, "the slow reader got no chunk at all"
        # once ZeroMQ released the frames, nothing stays pinned
        l1 = lambda: http_json(srv.http)["storage_manager"]["l1_manager"]
        wait_for(lambda: l1()["pinned_count"] == 0 and l1()["pinned_bytes"] == 0, 10, what="pins released")
    finally:
        slow.close(0)
        ctx.term()
    assert srv.proc.poll() is None, srv.log()


def test_unsent_inline_replies_pin_at_most_their_share_of_l1(lmcd_factory):
    """Pinned memory is bounded (--inline-max-pinned-ratio): past it a reply
    is cut short (a shorter prefix is a valid answer), counted and logged."""
    srv = lmcd_factory(["--l1-size-gb", "0.0625", "--inline-max-pinned-ratio", "0.25",
                        "--max-message-bytes", str(64 * MIB)])
    tags = [f"k{k}" for k in range(6)]
    with Client(srv.url, timeout=30) as w:
        for t in tags:
            assert w.store_inline(key_for(t, 4), [chunk_bytes(t, i) for i in range(4)]) == 4
    ctx = zmq.Context()
    slow = slow_dealer(ctx, srv.url)
    try:
        for uid, t in enumerate(tags):
            slow.send_multipart([pack(uid), pack("lmcd.retrieve_inline"), pack(key_for(t, 4))])
        st = lambda: http_json(srv.http)
        wait_for(lambda: st()["counters"]["inline_pin_refused"] > 0, 10, what="a reply cut short")
        l1 = st()["storage_manager"]["l1_manager"]
        assert 0 < l1["pinned_bytes"] <= l1["memory_total_bytes"] // 4, l1
        srv.wait_log("--inline-max-pinned-ratio")
        total = 0
        for _ in tags:
            assert slow.poll(30000, zmq.POLLIN)
            frames = slow.recv_multipart()
            t = tags[unpack(frames[0])]
            assert unpack(frames[2]) == len(frames) - 3
            for i, c in enumerate(frames[3:]):
                assert bytes(c) == chunk_bytes(t, i)
                total += 1
        assert 0 < total < 6 * 4, total
    finally:
        slow.close(0)
        ctx.term()
