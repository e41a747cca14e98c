"""Bad input never takes lmcd down (mp_protocol.md section 9).

Every malformed or unservable request is dropped (no reply; with
--send-error-frames in 2609, an LMCACHE_RPC_ERROR_V1 reply), counted and
logged rate-limited per peer and kind, and the same client's next good
request is answered.
"""
import threading

import msgpack
import pytest
import zmq

from lmcd_client import ERROR_MARKER, Client, RpcError, http_json, make_key, pack, unpack

P2604, P2609 = "lmcache-2604", "lmcache-2609"
QUIET = 0.5  # seconds a dropped request is watched for a stray reply

KEY = make_key("m", list(range(300)), 0, 256, "r")
DEEP_ARRAY = b"\x91" * 100 + b"\x00"
DEEP_MAP = b"\x81\xa1k" * 100 + b"\x00"

# (name, frames after the identity) -- each must be dropped without a reply
BAD_2609 = [
    ("one frame", [pack(0)]),
    ("uid str", [pack("x"), pack(24)]),
    ("uid nil", [b"\xc0", pack(24)]),
    ("uid float", [pack(1.5), pack(24)]),
    ("uid empty frame", [b"", pack(24)]),
    ("uid reserved byte", [b"\xc1", pack(24)]),
    ("uid trailing bytes", [b"\x00\x00", pack(24)]),
    ("type nil", [pack(0), b"\xc0"]),
    ("type bin", [pack(0), b"\xc4\x01\x15"]),
    ("type empty", [pack(0), b""]),
    ("unknown id 99", [pack(0), pack(99)]),
    ("unknown id 0", [pack(0), pack(0)]),
    ("unknown id -1", [pack(0), pack(-1)]),
    ("unknown id 2^40", [pack(0), pack(2 ** 40)]),
    ("unknown name", [pack(0), pack("no_such_operation")]),
    ("arity get_chunk_size+1", [pack(0), pack(21), pack(1)]),
    ("arity query 0", [pack(0), pack(9)]),
    ("arity ping 2", [pack(0), pack(22), b"\xc0", b"\xc0"]),
    ("arity commit_store 2", [pack(0), pack(17), pack(KEY), pack(1)]),
    ("arity lookup 3", [pack(0), pack(8), pack(KEY), pack(1), pack(1)]),
    ("truncated key", [pack(0), pack(8), pack(KEY)[:-3], pack(1)]),
    ("truncated str", [pack(0), pack(9), b"\xa5ab"]),
    ("truncated uid", [b"\xcd\x01", pack(24)]),
    ("reserved byte payload", [pack(0), pack(9), b"\xc1"]),
    ("trailing bytes payload", [pack(0), pack(9), pack("a") + b"\x00"]),
    ("deep arrays", [pack(0), pack(22), DEEP_ARRAY]),
    ("deep maps", [pack(0), pack(9), DEEP_MAP]),
    ("deep arrays in key", [pack(0), pack(8), pack(dict(KEY, token_ids=None))[:-1] + DEEP_ARRAY, pack(1)]),
    ("ping str", [pack(0), pack(22), pack("me")]),
    ("query int", [pack(0), pack(9), pack(5)]),
    ("query bin", [pack(0), pack(9), pack(b"r")]),
    ("key tokens str", [pack(0), pack(8), pack(dict(KEY, token_ids=["a", "b"])), pack(1)]),
    ("key missing field", [pack(0), pack(8), pack({k: v for k, v in KEY.items() if k != "token_ids"}), pack(1)]),
    ("key is a list", [pack(0), pack(8), pack(list(KEY.values())), pack(1)]),
    ("tp_size str", [pack(0), pack(8), pack(KEY), pack("1")]),
    ("commit data str", [pack(0), pack(17), pack(dict(KEY, worker_id=0)), pack(1), pack("x")]),
    ("clear str", [pack(0), pack(20), pack("yes")]),
    ("wait timeout str", [pack(0), pack(10), pack("r"), pack("soon")]),
    ("ext code 5", [pack(0), pack(22), pack(msgpack.ExtType(5, b"x"))]),
    ("ext code 2 in kv_cache", [pack(0), pack(1), pack(1), pack([msgpack.ExtType(2, b"x")]), pack("m"),
                                pack(1), pack("vllm"), pack({}), pack([])]),
    ("array 2^32 header", [pack(0), pack(9), b"\xdd\xff\xff\xff\xff"]),
    ("map 2^32 header", [pack(0), pack(8), b"\xdf\xff\xff\xff\xff", pack(1)]),
    ("bin 2^32 header", [pack(0), pack(17), pack(KEY), pack(1), b"\xc6\xff\xff\xff\xff"]),
    ("str 2^32 header", [pack(0), pack(9), b"\xdb\xff\xff\xff\xff"]),
    ("tokens 2^32 header", [pack(0), pack(8), pack(dict(KEY, token_ids=[]))[:-1] + b"\xdd\xff\xff\xff\xff",
                            pack(1)]),
    ("message form missing field", [pack(0), pack(9), pack({"request": "r"})]),
    ("message form for register_kv_cache", [pack(0), pack(1), pack({"instance_id": 1})]),
    ("inline without chunks key", [pack(0), pack("lmcd.store_inline"), pack(1)]),
]

BAD_2604 = [
    ("one frame", [pack(0)]),
    ("uid str", [pack("x"), pack(14)]),
    ("unknown id 99", [pack(0), pack(99)]),
    ("unknown id 27", [pack(0), pack(27)]),
    ("name", [pack(0), pack("noop")]),
    ("arity noop 1", [pack(0), pack(14), pack(1)]),
    ("arity report 2", [pack(0), pack(13), pack(1), pack([])]),
    ("message form", [pack(0), pack(6), pack({"request_id": "r"})]),
    ("truncated", [pack(0), pack(6), b"\xa5ab"]),
    ("deep", [pack(0), pack(12), DEEP_ARRAY]),
    ("ext code 3", [pack(0), pack(12), pack(msgpack.ExtType(3, b""))]),
    ("array 2^32 header", [pack(0), pack(6), b"\xdd\xff\xff\xff\xff"]),
]


def good_roundtrip(c, uid):
    """A NOOP (by the profile's id) with a distinct uid; the next message
    received must be its reply."""
    typ = c.type_frame("noop")
    frames = c.roundtrip_raw([pack(uid), typ], timeout=5.0)
    assert frames == [pack(uid), typ, pack("OK")], f"unexpected reply {frames!r}"


def assert_quiet(c):
    with pytest.raises(TimeoutError):
        c.recv_raw(QUIET)


def bad_counts(s):
    return http_json(s.http)["server"]["bad_requests"]


@pytest.mark.parametrize("profile,cases", [(P2609, BAD_2609), (P2604, BAD_2604)], ids=["2609", "2604"])
def test_bad_requests_dropped_and_next_answered(lmcd_factory, profile, cases):
    s = lmcd_factory(["--l1-size-gb", "0.1", "--protocol", profile, "--max-message-bytes", "4096"])
    with Client(s.url, profile=profile, timeout=5.0) as c:
        for i, (name, frames) in enumerate(cases):
            c.send_raw(frames)
            try:
                good_roundtrip(c, 1000 + i)
            except AssertionError as e:
                raise AssertionError(f"after bad input {name!r}: {e}") from None
        assert_quiet(c)
    assert s.proc.poll() is None, s.log()
    counts = bad_counts(s)
    assert counts["few_frames"] == 1
    assert sum(counts.values()) == len(cases), counts


def test_oversized_message(lmcd_factory):
    s = lmcd_factory(["--l1-size-gb", "0.1", "--max-message-bytes", "4096"])
    with Client(s.url, timeout=5.0) as c:
        # frames each under the limit, together over it: counted and dropped
        c.send_raw([pack(1), pack("lmcd.store_inline"), pack(dict(KEY, worker_id=0))] + [b"y" * 1024] * 8)
        good_roundtrip(c, 2)
        c.send_raw([pack(3), pack(24)] + [b""] * 5000)   # many (empty) frames: wrong arity
        good_roundtrip(c, 4)
        # just under the limit is served
        key = make_key("m", list(range(256)), 0, 256, "r", worker_id=0)
        assert c.store_inline(key, [b"z" * 2048]) == 1
        assert_quiet(c)
    counts = bad_counts(s)
    assert counts["oversize"] == 1 and counts["decode"] == 1, counts
    assert any("larger than --max-message-bytes" in line for line in drop_lines(s)), s.log()
    # One frame over the limit: libzmq's ZMQ_MAXMSGSIZE drops the connection
    # before lmcd sees the message; the DEALER reconnects and is served again.
    with Client(s.url, timeout=5.0) as c:
        c.send_raw([pack(0), pack(24), pack(b"x" * 5000)])
        answered = False
        for _ in range(40):                 # bounded: 40 x 0.25 s
            try:
                answered = c.call("noop", timeout=0.25) == "OK"
                break
            except TimeoutError:
                continue
        assert answered, "no reply after an oversized frame"
    assert s.proc.poll() is None


def test_senders_that_disconnect_at_once(lmcd_factory):
    s = lmcd_factory(["--l1-size-gb", "0.1"])
    ctx = zmq.Context()
    try:
        for round_ in range(20):
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.connect(s.url)
            key = make_key("m", [round_] * 512, 0, 512, f"gone{round_}", worker_id=0)
            for uid in range(20):
                d.send_multipart([pack(uid), pack(24)])
            d.send_multipart([pack(20), pack("lmcd.store_inline"), pack(key), b"a" * 4096, b"b" * 4096])
            d.send_multipart([pack(21), pack("lmcd.retrieve_inline"), pack(key)])
            d.send_multipart([pack(22), pack(8), pack(dict(key, worker_id=None)), pack(1)])
            d.send_multipart([pack(23), pack(10), pack(f"gone{round_}-never"), pack(0.3)])  # parked WAIT
            d.close(0)
    finally:
        ctx.term()
    with Client(s.url, timeout=5.0) as c:
        assert c.noop() == "OK"
        # the parked WAITs time out and their replies go nowhere; still serving
        assert c.wait_prefetch_status("x", 0.5) == 0
        assert c.get_chunk_size() == 256
    assert s.proc.poll() is None, s.log()


def drop_lines(s):
    return [line for line in s.log().splitlines() if "dropped a request" in line]


def test_log_does_not_flood(lmcd_factory):
    s = lmcd_factory(["--l1-size-gb", "0.1"])
    kinds = {
        "decode": [pack(0), pack(99)],
        "few": [pack(0)],
        "unserved": [pack(0), pack(25)],
    }
    with Client(s.url, timeout=5.0) as c:
        for frames in kinds.values():
            for _ in range(200):
                c.send_raw(frames)
        good_roundtrip(c, 7)
        assert_quiet(c)
    counts = bad_counts(s)
    assert counts["decode"] == 200 and counts["few_frames"] == 200 and counts["unserved"] == 200
    lines = drop_lines(s)
    assert 1 <= len(lines) <= 2 * len(kinds), "\n".join(lines)
    for text in ("fewer than 3 frames", "not served"):
        assert 1 <= sum(text in line for line in lines) <= 2, "\n".join(lines)


@pytest.mark.parametrize("profile,ids", [(P2609, [25, 26, 27, 28, 29, 30, 31, 3, 5, 33, 34, "subscribe_kv_events"]),
                                         (P2604, [15, 18, 22, 26])], ids=["2609", "2604"])
def test_cacheblend_p2p_ids_unanswered_and_logged(lmcd_factory, profile, ids):
    s = lmcd_factory(["--l1-size-gb", "0.1", "--protocol", profile, "--send-error-frames"])
    for i, op_id in enumerate(ids):
        # one client per id: the log limiter is per peer and kind
        with Client(s.url, profile=profile, timeout=5.0) as c:
            c.send_raw([pack(i), pack(op_id), pack(1)])
            good_roundtrip(c, 100 + i)
            assert_quiet(c)
    assert bad_counts(s)["unserved"] == len(ids)
    lines = [line for line in drop_lines(s) if "not served" in line]
    assert len(lines) == len(ids), s.log()
    if profile == P2609:
        log = s.log()
        for name in ("cb_register_rope", "p2p_lookup_and_lock", "cb_protocol_handshake", "store_q"):
            assert name in log, f"{name} not named in the log"
    assert s.proc.poll() is None


def test_error_frames_2609(lmcd_factory):
    s = lmcd_factory(["--l1-size-gb", "0.1", "--send-error-frames"])
    with Client(s.url, timeout=5.0) as c:
        for uid, frames in ((1, [pack(1), pack(99)]),
                            (2, [pack(2), pack(21), pack(1)]),
                            (3, [pack(3), pack("x" * 6000)]),
                            (4, [pack(4), pack(9), b"\xdd\xff\xff\xff\xff"])):
            reply = c.roundtrip_raw(frames)
            assert reply[:2] == frames[:2], "uid and type echoed"
            assert reply[2] == ERROR_MARKER and len(reply) == 4
            err = unpack(reply[3])
            assert set(err) == {"error_type", "message"}, err
            assert isinstance(err["error_type"], str) and isinstance(err["message"], str)
            assert 0 < len(err["message"].encode()) <= 4096
        # what cannot be echoed is still dropped
        c.send_raw([pack("x"), pack(24)])
        c.send_raw([pack(0)])
        good_roundtrip(c, 9)
        assert_quiet(c)
        # the client surfaces it as RpcError
        uid = c.submit_frames("get_chunk_size", [pack(1)])
        with pytest.raises(RpcError):
            c.wait(uid)
        assert c.get_chunk_size() == 256


def test_error_frames_never_in_2604(lmcd_factory):
    s = lmcd_factory(["--l1-size-gb", "0.1", "--protocol", P2604, "--send-error-frames"])
    with Client(s.url, profile=P2604, timeout=5.0) as c:
        c.send_raw([pack(1), pack(99)])
        c.send_raw([pack(2), pack(11), pack(1)])
        c.send_raw([pack(3), pack(6), b"\xc1"])
        good_roundtrip(c, 4)
        assert_quiet(c)
    assert s.proc.poll() is None


def test_bad_input_from_many_clients_at_once(lmcd_factory):
    """Threads hammer bad frames while another client keeps being served."""
    s = lmcd_factory(["--l1-size-gb", "0.1", "--max-message-bytes", "4096"])
    errors = []

    def hammer(i):
        try:
            with Client(s.url, timeout=5.0) as c:
                for j in range(100):
                    _, frames = BAD_2609[(i * 13 + j) % len(BAD_2609)]
                    c.send_raw(frames)
                good_roundtrip(c, 5000 + i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    with Client(s.url, timeout=5.0) as c:
        for _ in range(50):
            assert c.noop() == "OK"
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[0]
    assert s.proc.poll() is None, s.log()
