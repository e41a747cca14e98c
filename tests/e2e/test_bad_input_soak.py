"""A seeded soak of malformed traffic against the real server: valid
requests of every kind, mutated (bytes flipped, cut, frames dropped,
duplicated, swapped), sent in both profiles for a bounded time. lmcd must
stay up, keep answering a well-behaved client between bursts, and exit
cleanly on SIGTERM (under SAN=1 any memory error fails the run)."""
import random
import time

import msgpack
import pytest
import zmq

from lmcd_client import Client, ed_payload, make_key

SOAK_SECONDS = 2.0


def valid_requests(rng):
    toks = [rng.randrange(1 << 16) for _ in range(512)]
    key = make_key("m", toks, 0, 512, "r%d" % rng.randrange(8), 1, rng.choice([None, 0]))
    p = lambda *xs: [msgpack.packb(x, use_bin_type=True) for x in xs]
    return [
        (8, p(key, 1)), (9, p("r1")), (10, p("r1", 0.01)), (11, p("r1")), (12, p(key, 1)),
        (13, p("r1")), (14, p(ed_payload(rng.randrange(4)))), (16, p(key, 1)), (17, p(key, 1, b"")),
        (18, p(key, 1)), (19, p(key, 1)), (20, p(True)), (21, []), (22, p(None)), (24, []),
        (23, p(1, "m", [{"req_id": "r", "new_block_ids": [1], "new_token_ids": [2]}])),
        (1, p(1, [msgpack.ExtType(1, b"\x80\x04junk")], "m", 1, "vllm", {}, [])),
        ("lmcd.store_inline", p(dict(key, worker_id=0)) + [b"x" * 64]),
        ("lmcd.retrieve_inline", p(dict(key, worker_id=0))),
    ]


def mutate(rng, frames):
    frames = [bytearray(f) for f in frames]
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(6)
        if op == 0 and frames:  # flip bytes
            f = rng.choice(frames)
            for _ in range(rng.randrange(1, 4)):
                if f:
                    f[rng.randrange(len(f))] = rng.randrange(256)
        elif op == 1 and frames:  # cut a frame
            f = rng.choice(frames)
            del f[rng.randrange(len(f) + 1):]
        elif op == 2 and frames:  # drop a frame
            frames.pop(rng.randrange(len(frames)))
        elif op == 3 and frames:  # duplicate a frame
            frames.insert(rng.randrange(len(frames) + 1), bytearray(rng.choice(frames)))
        elif op == 4 and len(frames) > 1:  # swap two frames
            i, j = rng.sample(range(len(frames)), 2)
            frames[i], frames[j] = frames[j], frames[i]
        else:  # random garbage frame
            frames.insert(rng.randrange(len(frames) + 1), bytearray(rng.randbytes(rng.randrange(40))))
    return [bytes(f) for f in frames]


@pytest.mark.parametrize("profile", ["lmcache-2609", "lmcache-2604"])
def test_bad_input_soak_of_mutated_requests(lmcd_factory, profile):
    srv = lmcd_factory(["--protocol", profile, "--l1-size-gb", "0.05"])
    rng = random.Random(2609 if profile.endswith("2609") else 2604)
    ctx = zmq.Context.instance()
    bad = ctx.socket(zmq.DEALER)
    bad.setsockopt(zmq.LINGER, 0)
    bad.connect(srv.url)
    sent = 0
    deadline = time.monotonic() + SOAK_SECONDS
    try:
        with Client(srv.url, profile=profile, timeout=5) as good:
            while time.monotonic() < deadline:
                for _ in range(50):
                    typ, payload = rng.choice(valid_requests(rng))
                    frames = [msgpack.packb(rng.randrange(1 << 20)), msgpack.packb(typ)] + payload
                    mutated = mutate(rng, frames)
                    if not mutated:
                        continue  # a message needs one frame at least
                    try:
                        bad.send_multipart(mutated, zmq.NOBLOCK)
                        sent += 1
                    except zmq.Again:
                        pass
                while bad.poll(0):  # replies to mutations that still decoded
                    bad.recv_multipart()
                assert good.ping() is True
                assert good.get_chunk_size() == 256
            assert srv.proc.poll() is None
        assert sent > 100
    finally:
        bad.close()
    assert srv.stop() == 0
