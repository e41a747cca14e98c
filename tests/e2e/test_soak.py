"""Soak: everything bad at once, and good clients still get correct, timely replies
(issue 11, "Proof").

For LMCD_SOAK_SECONDS (default 30, 15 under sanitizers), against one real lmcd:
  - good clients (2 threads) store chunks inline, read them back, LOOKUP them
    and poll the prefetch status, and ping; every reply is checked byte for
    byte and must arrive within LMCD_SOAK_ON_TIME seconds (default 10, 30
    under sanitizers: this runs beside other test suites on 2 loaded cores);
  - a good HTTP client asks /healthcheck twice a second, same bound;
  - a flooding peer sends malformed frames, unknown types, 8k-token LOOKUPs
    and NOOPs as fast as ZeroMQ takes them and never reads a reply;
  - slowloris: LMCD_SOAK_SLOW_SOCKETS (default 300) half-open HTTP
    connections trickle a header byte now and then;
  - a plugin storm: plugins that crash, flood their output, ignore SIGTERM and
    leave setsid escapees behind, restarted whenever they exit.
Then lmcd stops on SIGTERM with status 0, and nothing it started remains:
no process below it, no shared-memory segment.
"""
import hashlib
import http.client
import os
import socket
import threading
import time

import zmq

from lmcd_client import Client, make_key, pack
from test_plugin_lifecycle import alive, descendants, snapshot
from test_plugins import ENV, write

SANITIZED = bool(os.environ.get("SAN"))  # tests/run.sh passes make's SAN= on: lmcd runs 2-10x slower
SECONDS = float(os.environ.get("LMCD_SOAK_SECONDS", "15" if SANITIZED else "30"))
ON_TIME = float(os.environ.get("LMCD_SOAK_ON_TIME", "30" if SANITIZED else "10"))
SLOW_SOCKETS = int(os.environ.get("LMCD_SOAK_SLOW_SOCKETS", "300"))
CHUNK = 16
CHUNKS = 4

PLUGINS = {
    "crasher.sh": "echo crashing\nexit 1\n",
    "talker.py": "import sys\nfor i in range(20000):\n    print('line', i)\nsys.exit(0)\n",
    "ignorer.sh": "trap '' TERM\necho ignoring\nsleep 2\nexit 2\n",
    "escaper.sh": "setsid sleep 1000 &\n( setsid sleep 1000 & )\necho escaped\nsleep 1\nexit 0\n",
}


def chunk_bytes(tag, i):
    seed = hashlib.sha256(f"{tag}/{i}".encode()).digest()
    return seed * 128  # 4 KiB


class Good(threading.Thread):
    """One well-behaved client; records every failure and the slowest reply."""

    def __init__(self, srv, n, stop_at):
        super().__init__(daemon=True)
        self.srv, self.n, self.stop_at = srv, n, stop_at
        self.errors, self.replies, self.slowest, self.chunks_checked = [], 0, 0.0, 0

    def timed(self, fn, *args):
        t0 = time.monotonic()
        v = fn(*args, timeout=ON_TIME)
        took = time.monotonic() - t0
        self.slowest = max(self.slowest, took)
        self.replies += 1
        return v

    def run(self):
        try:
            with Client(self.srv.url, timeout=ON_TIME) as c:
                i = 0
                while time.monotonic() < self.stop_at:
                    tag = f"good{self.n}-{i}"
                    toks = [(self.n * 1000003 + i * 97 + t) % 50000 for t in range(CHUNK * CHUNKS)]
                    key = make_key("soak", toks, 0, CHUNK * CHUNKS, tag, worker_id=0)
                    want = [chunk_bytes(tag, k) for k in range(CHUNKS)]
                    stored = self.timed(c.store_inline, key, want)
                    if not isinstance(stored, int) or not 0 <= stored <= CHUNKS:
                        self.errors.append(f"store_inline {tag}: {stored!r}")
                    got = self.timed(c.retrieve_inline, key)
                    if got != want[:len(got)]:
                        self.errors.append(f"retrieve_inline {tag}: wrong bytes")
                    self.chunks_checked += len(got)
                    skey = make_key("soak", toks, 0, CHUNK * CHUNKS, tag, worker_id=None)
                    self.timed(lambda k, timeout: c.call("lookup", k, 1, timeout=timeout), skey)
                    deadline = time.monotonic() + ON_TIME
                    while True:
                        hits = self.timed(lambda r, timeout: c.call("query_prefetch_status", r, timeout=timeout), tag)
                        if hits is not None:
                            break
                        if time.monotonic() > deadline:
                            self.errors.append(f"prefetch status of {tag} never settled")
                            break
                        time.sleep(0.01)
                    if hits is not None and not 0 <= hits <= CHUNKS:
                        self.errors.append(f"lookup {tag}: {hits} hits")
                    self.timed(lambda r, timeout: c.call("end_session", r, timeout=timeout), tag)
                    if self.timed(lambda timeout: c.call("ping", None, timeout=timeout)) is not True:
                        self.errors.append("ping did not answer true")
                    i += 1
        except Exception as e:  # a timeout is a late reply: a failure of the soak
            self.errors.append(f"{type(e).__name__}: {e}")


class Health(threading.Thread):
    def __init__(self, srv, stop_at):
        super().__init__(daemon=True)
        self.srv, self.stop_at = srv, stop_at
        self.errors, self.ok, self.slowest = [], 0, 0.0

    def run(self):
        while time.monotonic() < self.stop_at:
            t0 = time.monotonic()
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.srv.http_port, timeout=ON_TIME)
                c.request("GET", "/healthcheck")
                status = c.getresponse().status
                c.close()
                if status != 200:
                    self.errors.append(f"/healthcheck {status}")
                self.ok += 1
            except OSError as e:
                self.errors.append(f"/healthcheck: {e}")
            self.slowest = max(self.slowest, time.monotonic() - t0)
            time.sleep(0.5)


class Flood(threading.Thread):
    """Sends as fast as ZeroMQ takes it; never reads."""

    def __init__(self, srv, stop_at):
        super().__init__(daemon=True)
        self.srv, self.stop_at, self.sent = srv, stop_at, 0

    def run(self):
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 10)
        s.setsockopt(zmq.SNDHWM, 200)
        s.connect(self.srv.url)
        big = make_key("flood", list(range(8192)), 0, 8192, "flood", worker_id=None)
        msgs = [
            [b"\xc1"],
            [pack(1), pack(9999)],
            [pack(2), pack(8), pack(big), pack(1)],
            [pack(3), pack(24)],
            [pack(4), pack("no_such_op"), b"\x00" * 64],
            [pack(5), pack(8), b"\x81\xa3bad\xc0", pack(1)],
        ]
        try:
            while time.monotonic() < self.stop_at:
                try:
                    s.send_multipart(msgs[self.sent % len(msgs)], flags=zmq.NOBLOCK)
                    self.sent += 1
                except zmq.Again:
                    time.sleep(0.002)
        finally:
            s.close(0)
            ctx.term()


class Slowloris(threading.Thread):
    def __init__(self, port, n, stop_at):
        super().__init__(daemon=True)
        self.port, self.n, self.stop_at, self.open = port, n, stop_at, 0

    def run(self):
        socks = []
        try:
            for _ in range(self.n):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", self.port))
                socks.append(s)
            time.sleep(0.2)
            for s in socks:
                try:
                    s.send(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                except OSError:
                    pass
            while time.monotonic() < self.stop_at:
                alive_socks = []
                for s in socks:
                    try:
                        s.send(b"X")
                        alive_socks.append(s)
                    except OSError:  # lmcd closed it: open another, as an attacker would
                        s.close()
                        n = socket.socket()
                        n.setblocking(False)
                        n.connect_ex(("127.0.0.1", self.port))
                        alive_socks.append(n)
                socks = alive_socks
                self.open = len(socks)
                time.sleep(1.0)
        finally:
            for s in socks:
                s.close()


def test_soak_good_clients_stay_correct_and_timely_under_attack(lmcd_factory, tmp_path):
    pdir = tmp_path / "plugins"
    pdir.mkdir()
    for name, body in PLUGINS.items():
        write(pdir / name, body)
    shm = f"lmcd_soak_{os.getpid()}"
    srv = lmcd_factory(["--chunk-size", str(CHUNK), "--l1-size-gb", "0.0625", "--shm-name", shm,
                        "--runtime-plugin-locations", str(pdir), "--runtime-plugin-restart", "always",
                        "--runtime-plugin-max-restarts", "100000", "--runtime-plugin-stop-timeout", "1"],
                       env=ENV)
    stop_at = time.monotonic() + SECONDS
    threads = [Good(srv, n, stop_at) for n in range(2)]
    health = Health(srv, stop_at)
    flood = Flood(srv, stop_at)
    slow = Slowloris(srv.http_port, SLOW_SOCKETS, stop_at)
    everyone = threads + [health, flood, slow]
    seen = {}
    for t in everyone:
        t.start()
    while time.monotonic() < stop_at:  # note what runs below lmcd as the storm goes on
        seen.update(snapshot(descendants(srv.proc.pid)))
        time.sleep(1.0)
    for t in everyone:
        t.join(ON_TIME + 30)
    seen.update(snapshot(descendants(srv.proc.pid)))

    errors = [e for t in threads for e in t.errors] + health.errors
    replies = sum(t.replies for t in threads)
    checked = sum(t.chunks_checked for t in threads)
    summary = (f"{replies} good replies (slowest {max(t.slowest for t in threads):.2f} s), {checked} chunks "
               f"checked, {health.ok} health checks (slowest {health.slowest:.2f} s), {flood.sent} flood "
               f"messages, {slow.open} slow sockets, {len(seen)} processes seen below lmcd")
    print(summary)
    assert not errors, f"{len(errors)} failures, first: {errors[:5]}\n{summary}"
    assert replies > 0 and checked > 0 and health.ok > 0 and flood.sent > 0, summary
    assert srv.proc.poll() is None, srv.log()[-4000:]
    assert "restarted" in srv.log() or "Restarting runtime plugin" in srv.log(), "the plugin storm ran"

    assert srv.stop(timeout=60) == 0
    deadline = time.monotonic() + 10
    while alive(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive(seen)
    for pid in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    assert not left, f"processes outlived lmcd: {left}"
    assert not os.path.exists(f"/dev/shm/{shm}"), "the L1 segment was left behind"
