"""The L1 segment against an unlucky operator and a careless neighbour
(issue 11 items 1, 3, 4, 5 and 16).

* A full /dev/shm: lmcd commits what it writes itself (header, object table)
  before writing it, so a start against a full /dev/shm fails with one clear
  line and leaves nothing, and a /dev/shm filled under a running lmcd only
  makes it skip chunks. Each test gets a private /dev/shm (unshare -m and a
  small tmpfs; skipped, saying why, where that is not possible).
* Two lmcd that are both pid 1 in their own PID namespaces share the host's
  /dev/shm: ownership is an flock held on the segment, so the second never
  takes the first's segment (it picks a unique name) and neither removes the
  other's. A forged owner pid never blocks a start.
* After kill -9, the next lmcd reclaims the dead one's segment and its
  0600 plugin config file (their locks are free), and leaves a live one's.
* A worker that truncates the segment (open(path, "w+b")) does not kill
  lmcd: it notices, drops every object, restores the segment in place and
  keeps serving, never a wrong byte.
"""
import fcntl
import glob
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

from conftest import LMCD, READY_LINE, free_port, shm_name, wait_for
from lmcd_client import Client, Segment, ed_payload, http_json, make_key

CHUNK = 256
TIMEOUT = 15.0


def can(cmd):
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


CAN_MOUNT_NS = can(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"])
CAN_PID_NS = can(["unshare", "-p", "-f", "--mount-proc", "true"])
needs_mount_ns = pytest.mark.skipif(not CAN_MOUNT_NS, reason="needs root and unshare --mount for a private /dev/shm")
needs_pid_ns = pytest.mark.skipif(not CAN_PID_NS, reason="needs root and unshare -p -f --mount-proc for a PID namespace")


class Proc:
    """An lmcd started under a wrapper command (unshare ...), its log in a file."""

    def __init__(self, tmp_path, wrapper, args, env=None, tag="lmcd"):
        self.port, self.http_port = free_port(), free_port()
        self.log_path = tmp_path / f"{tag}-{self.port}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                list(wrapper) + [LMCD, "--host", "127.0.0.1", "--port", str(self.port), "--http-host", "127.0.0.1",
                                 "--http-port", str(self.http_port), "--l1-size-gb", "0.0625",
                                 "--l1-init-size-gb", "0"] + list(args),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_ready(self):
        wait_for(lambda: READY_LINE in self.log() or self.proc.poll() is not None, TIMEOUT, what="lmcd ready")
        assert self.proc.poll() is None, self.log()
        return self

    @property
    def url(self):
        return f"tcp://127.0.0.1:{self.port}"

    def l1(self):
        return http_json(f"http://127.0.0.1:{self.http_port}")["storage_manager"]["l1_manager"]

    def lmcd_pid(self):
        """The lmcd process itself (under `unshare -f` it is the wrapper's child)."""
        def child():
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    kids = f.read().split()
            except OSError:
                return None
            return int(kids[0]) if kids else None
        return wait_for(child, TIMEOUT, what="the lmcd child of unshare")

    def stop(self, pid=None):
        """SIGTERM to lmcd itself; its exit status."""
        if self.proc.poll() is None:
            os.kill(pid or self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"lmcd did not stop:\n{self.log()}")


def chunks_of(seed, n, size):
    return [bytes([(seed + i) % 251]) * size for i in range(n)]


# ---------------------------------------------------------------- item 1: a full /dev/shm


@needs_mount_ns
def test_start_against_a_full_dev_shm_fails_cleanly_and_leaves_nothing(tmp_path):
    # lmcd runs in a private /dev/shm that a filler already took completely;
    # the shell then reports lmcd's exit status and what is left there.
    script = ('mount -t tmpfs -o size=4m tmpfs /dev/shm && '
              '(dd if=/dev/zero of=/dev/shm/filler bs=64k 2>/dev/null; true) && '
              '"$0" "$@"; echo "lmcd-exit=$?"; ls -A /dev/shm | sed "s/^/left: /"')
    out = tmp_path / "out.log"
    with open(out, "wb") as f:
        r = subprocess.run(["unshare", "--mount", "sh", "-c", script, LMCD, "--host", "127.0.0.1", "--port",
                            str(free_port()), "--no-http", "--l1-size-gb", "0.0625"],
                           stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, timeout=60)
    text = out.read_text(errors="replace")
    assert r.returncode == 0, text
    assert "lmcd-exit=135" not in text, f"SIGBUS:\n{text}"
    assert "lmcd-exit=0" not in text, text
    assert "Cannot start: /dev/shm has no room for the header and object table" in text, text
    left = [ln for ln in text.splitlines() if ln.startswith("left: ")]
    assert left == ["left: filler"], f"only the filler stays in /dev/shm: {left}\n{text}"


@needs_mount_ns
def test_dev_shm_filled_under_a_running_lmcd_never_kills_it(tmp_path):
    srv = Proc(tmp_path, ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$0" "$@"'],
               []).wait_ready()
    try:
        with Client(srv.url, timeout=TIMEOUT) as c:
            toks = list(range(4 * CHUNK))
            first = chunks_of(1, 4, 4096)
            key = make_key("m", toks, 0, 4 * CHUNK, "r", 1, 0)
            assert c.store_inline(key, first) == 4
            # Another process fills what is left of this /dev/shm.
            subprocess.run(["nsenter", f"--mount=/proc/{srv.proc.pid}/ns/mnt", "sh", "-c",
                            "dd if=/dev/zero of=/dev/shm/filler bs=64k 2>/dev/null; true"], timeout=60, check=True)
            # 300 objects take fresh object-table entries on pages never
            # written before: each must be skipped, never SIGBUS.
            many = list(range(1000, 1000 + 300 * CHUNK))
            stored = c.store_inline(make_key("m", many, 0, 300 * CHUNK, "r2", 1, 0), chunks_of(7, 300, 4096))
            assert stored < 300
            assert c.ping() is True, "still serving"
            got = c.retrieve_inline(key)
            assert got == first, "what was stored before reads back intact"
        assert srv.proc.poll() is None, srv.log()
        assert "/dev/shm is full" in srv.log()
        assert "raises SIGBUS" not in srv.log(), "the start-up warning no longer promises SIGBUS"
    finally:
        assert srv.stop() == 0, srv.log()


@needs_mount_ns
def test_init_size_is_committed_after_start(tmp_path):
    # --l1-init-size-gb as LMCache means it: the first init bytes (rounded up
    # to 64 MiB, clamped to the size) are committed, in the background right
    # after start (as newest LMCache defers its pinning). Here the whole
    # 64 MiB L1 is, in a 100 MiB /dev/shm.
    wrapper = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o size=100m tmpfs /dev/shm && exec "$0" "$@"']
    srv = Proc(tmp_path, wrapper, ["--l1-init-size-gb", "1", "--shm-name", "init"]).wait_ready()
    try:
        srv_log = wait_for(lambda: "the first 67108864 bytes are committed" in srv.log() and srv.log(), TIMEOUT,
                           what="the init slice committed (in the background)")
        assert READY_LINE in srv_log
        r = subprocess.run(["nsenter", f"--mount=/proc/{srv.proc.pid}/ns/mnt", "df", "-B1", "--output=used",
                            "/dev/shm"], capture_output=True, text=True, timeout=30, check=True)
        used = int(r.stdout.split()[-1])
        assert used >= 64 << 20, f"{used} bytes of /dev/shm used"
    finally:
        assert srv.stop() == 0, srv.log()


# ---------------------------------------------------------------- item 3: ownership


@needs_pid_ns
def test_two_lmcd_as_pid_1_sharing_dev_shm_keep_their_own_segments(tmp_path):
    pidns = ["unshare", "-p", "-f", "--kill-child", "--mount-proc"]  # lmcd dies if the wrapper is killed
    a = Proc(tmp_path, pidns, [], tag="a").wait_ready()
    b = None
    try:
        name_a = a.l1()["shm_name"]
        # pid 1 in its own namespace (a unique suffix only if another pid-1 lmcd runs on this host)
        assert name_a.startswith("lmcache_l1_pool_1"), name_a
        ino_a = os.stat(f"/dev/shm/{name_a}").st_ino
        b = Proc(tmp_path, pidns, [], tag="b").wait_ready()
        name_b = b.l1()["shm_name"]
        assert name_b != name_a and name_b.startswith("lmcache_l1_pool_1_"), name_b
        assert f"L1 segment /{name_a} is held by a running lmcd" in b.log() or name_a != "lmcache_l1_pool_1"
        assert os.stat(f"/dev/shm/{name_a}").st_ino == ino_a, "the first lmcd's segment was not replaced"
        assert f"Reclaimed stale L1 segment /{name_a}:" not in b.log()
        # Each serves its own bytes.
        toks = list(range(2 * CHUNK))
        key = make_key("m", toks, 0, 2 * CHUNK, "r", 1, 0)
        with Client(a.url, timeout=TIMEOUT) as ca, Client(b.url, timeout=TIMEOUT) as cb:
            assert ca.store_inline(key, chunks_of(10, 2, 8192)) == 2
            assert cb.store_inline(key, chunks_of(20, 2, 8192)) == 2
            assert ca.retrieve_inline(key) == chunks_of(10, 2, 8192)
            assert cb.retrieve_inline(key) == chunks_of(20, 2, 8192)
        # Stopping the second removes its segment, never the first's.
        assert b.stop(b.lmcd_pid()) == 0, b.log()
        b = None
        assert not os.path.exists(f"/dev/shm/{name_b}")
        assert os.stat(f"/dev/shm/{name_a}").st_ino == ino_a
        with Client(a.url, timeout=TIMEOUT) as ca:
            assert ca.retrieve_inline(key) == chunks_of(10, 2, 8192), "the first still serves its own bytes"
        assert a.stop(a.lmcd_pid()) == 0, a.log()
        a = None
        assert not os.path.exists(f"/dev/shm/{name_a}")
    finally:
        for p in (a, b):
            if p is not None and p.proc.poll() is None:
                p.proc.kill()  # --kill-child takes lmcd along
                p.proc.wait(5)


def write_header(path, owner_pid, version=2):
    """A segment with lmcd's magic and a (forged) owner pid, no lock held."""
    hdr = b"LMCDL1\0\0" + struct.pack("<IIQ", version, 64, owner_pid)
    with open(path, "wb") as f:
        f.write(hdr.ljust(8192, b"\0"))


def test_forged_owner_pid_does_not_block_a_start(lmcd_factory):
    for version in (1, 2):
        name = shm_name(f"forged{version}")
        write_header(f"/dev/shm/{name}", os.getpid(), version)  # a live pid: this test
        try:
            srv = lmcd_factory(["--shm-name", name])
            assert "Reclaimed stale L1 segment /" + name in srv.log()
            assert os.stat(f"/dev/shm/{name}").st_size == srv_pool(srv)
            assert srv.stop() == 0
            assert not os.path.exists(f"/dev/shm/{name}")
        finally:
            if os.path.exists(f"/dev/shm/{name}") and srv_gone(name):
                os.unlink(f"/dev/shm/{name}")


def srv_gone(name):
    """True when nobody holds the owner lock of /dev/shm/name."""
    fd = os.open(f"/dev/shm/{name}", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def srv_pool(srv):
    return http_json(srv.http)["storage_manager"]["l1_manager"]["pool_size"]


def test_explicit_name_held_by_a_live_lmcd_is_refused_with_one_clear_line(lmcd_factory):
    name = shm_name("held")
    first = lmcd_factory(["--shm-name", name])
    ino = os.stat(f"/dev/shm/{name}").st_ino
    second = lmcd_factory(["--shm-name", name], ready=False)
    assert second.proc.wait(TIMEOUT) != 0
    assert "is held by a running lmcd (its owner lock is taken)" in second.log(), second.log()
    assert os.stat(f"/dev/shm/{name}").st_ino == ino
    assert first.stop() == 0


def test_a_file_under_our_name_that_is_not_lmcds_is_left_alone(lmcd_factory):
    name = shm_name("foreign")
    path = f"/dev/shm/{name}"
    with open(path, "wb") as f:
        f.write(b"someone else's data")
    try:
        srv = lmcd_factory(["--shm-name", name], ready=False)
        assert srv.proc.wait(TIMEOUT) != 0
        assert "not an lmcd segment" in srv.log()
        with open(path, "rb") as f:
            assert f.read() == b"someone else's data"
    finally:
        os.unlink(path)


# ---------------------------------------------------------------- item 4: stale segments and files


@needs_mount_ns
def test_kill_9_leftovers_are_reclaimed_by_the_next_lmcd_and_a_live_ones_kept(tmp_path):
    # A private /dev/shm shared by the three lmcd below (they enter the mount
    # namespace of a holder process), so no other lmcd on this host reclaims
    # the dead one's segment first.
    holder = subprocess.Popen(["unshare", "--mount", "sh", "-c",
                               "mount -t tmpfs -o size=512m tmpfs /dev/shm && touch /dev/shm/.ready && exec sleep 600"],
                              stdin=subprocess.DEVNULL)
    shm = f"/proc/{holder.pid}/root/dev/shm"
    wait_for(lambda: os.path.exists(f"{shm}/.ready"), TIMEOUT, what="the private /dev/shm")
    enter = ["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt"]
    run_tmp = tmp_path / "run"
    run_tmp.mkdir()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    env = {"TMPDIR": str(run_tmp)}
    args = ["--runtime-plugin-locations", str(plugins)]  # writes the 0600 plugin config file
    # Default segment names (lmcache_l1_pool_<pid>): the ones a crash leaks.
    dead = Proc(tmp_path, enter, args, env=env, tag="dead").wait_ready()
    live = Proc(tmp_path, enter, args, env=env, tag="live").wait_ready()
    nxt = None
    try:
        dead_seg = f"{shm}/lmcache_l1_pool_{dead.proc.pid}"
        live_seg = f"{shm}/lmcache_l1_pool_{live.proc.pid}"
        assert os.path.exists(dead_seg) and os.path.exists(live_seg)
        # The supervisor writes its file once the server is up.
        cfgs = set(wait_for(lambda: len(glob.glob(str(run_tmp / "lmcd-plugin-config.*"))) == 2
                            and glob.glob(str(run_tmp / "lmcd-plugin-config.*")), TIMEOUT, what="2 config files"))
        dead.proc.send_signal(signal.SIGKILL)
        dead.proc.wait(5)
        assert os.path.exists(dead_seg), "kill -9 leaves the segment"
        assert set(glob.glob(str(run_tmp / "lmcd-plugin-config.*"))) == cfgs, "and the config file"
        nxt = Proc(tmp_path, enter, args, env=env, tag="next").wait_ready()
        log = wait_for(lambda: "Reclaimed stale runtime plugin config file" in nxt.log() and nxt.log(), TIMEOUT,
                       what="the config file reclaimed")
        assert not os.path.exists(dead_seg)
        assert f"Reclaimed stale L1 segment /lmcache_l1_pool_{dead.proc.pid}:" in log, log
        assert log.count("Reclaimed stale runtime plugin config file") == 1
        assert os.path.exists(live_seg), "a live lmcd's segment is kept"
        wait_for(lambda: len(glob.glob(str(run_tmp / "lmcd-plugin-config.*"))) == 2, TIMEOUT, what="live + next")
        with Client(live.url, timeout=TIMEOUT) as c:
            toks = list(range(CHUNK))
            key = make_key("m", toks, 0, CHUNK, "r", 1, 0)
            assert c.store_inline(key, chunks_of(3, 1, 4096)) == 1
            assert c.retrieve_inline(key) == chunks_of(3, 1, 4096)
        assert nxt.stop() == 0
        nxt = None
        assert live.stop() == 0
        assert not os.path.exists(live_seg)
        assert glob.glob(str(run_tmp / "lmcd-plugin-config.*")) == []
    finally:
        for p in (dead, live, nxt):
            if p is not None and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(5)
        holder.kill()  # its /dev/shm goes with its mount namespace
        holder.wait(5)


# ---------------------------------------------------------------- item 5: a truncated segment


def truncate_like_a_careless_worker(name):
    subprocess.run([sys.executable, "-c", f"open('/dev/shm/{name}', 'w+b').close()"], check=True, timeout=30)


def test_worker_truncating_the_segment_never_kills_lmcd_nor_gets_a_wrong_byte(lmcd_factory):
    srv = lmcd_factory(["--l1-size-gb", "0.0625"])
    name = srv.shm_name
    size = 64 * 1024
    n = 8
    toks = list(range(n * CHUNK))
    key = make_key("m", toks, 0, n * CHUNK, "r", 1, 0)
    want = chunks_of(40, n, size)
    wrong = []
    stop = threading.Event()

    def reader():
        # Reads without pause while the segment is truncated: every answer
        # is a (possibly empty) prefix of exactly what was stored.
        with Client(srv.url, timeout=TIMEOUT) as c:
            while not stop.is_set():
                got = c.retrieve_inline(key) or []
                if got != want[:len(got)]:
                    wrong.append(len(got))

    with Client(srv.url, timeout=TIMEOUT) as c:
        assert c.store_inline(key, want) == n
        t = threading.Thread(target=reader)
        t.start()
        try:
            time.sleep(0.3)
            truncate_like_a_careless_worker(name)
            # Stores right after the truncation touch the segment (table,
            # copies): lmcd must survive them.
            for i in range(20):
                k2 = make_key("m", list(range(10_000 + i * CHUNK, 10_000 + (i + 1) * CHUNK)), 0, CHUNK, f"s{i}", 1, 0)
                c.store_inline(k2, chunks_of(i, 1, size))
            srv.wait_log("was truncated by another process")
            time.sleep(0.3)
        finally:
            stop.set()
            t.join(TIMEOUT)
        assert srv.proc.poll() is None, srv.log()
        assert not wrong, f"{len(wrong)} replies held wrong bytes"
        assert os.stat(f"/dev/shm/{name}").st_size == srv_pool(srv), "restored to its size"
        # Serving goes on: store and read back in the same segment.
        assert c.store_inline(key, want) == n
        assert c.retrieve_inline(key) == want
        # A second truncation is noticed and survived too.
        truncate_like_a_careless_worker(name)
        wait_for(lambda: srv.log().count("was truncated by another process") == 2, TIMEOUT, what="second loss")
        assert c.retrieve_inline(key) in ([], None), "nothing from before the loss is served"
        assert c.store_inline(key, want) == n
        assert c.retrieve_inline(key) == want
    assert srv.stop() == 0, srv.log()


def test_registered_worker_keeps_working_after_the_segment_is_restored(lmcd_factory):
    srv = lmcd_factory(["--chunk-size", "16", "--l1-size-gb", "0.05"])
    model = "e2e/model"
    with Client(srv.url, timeout=TIMEOUT) as c:
        reg = c.register_ed(ed_payload(7, model=model, world_size=1, block_size=16, num_layers=2,
                                       hidden_dim_size=64, chunk_size=16))
        assert reg.get("error") is None, reg
        toks = list(range(4 * 16))
        key = make_key(model, toks, 0, 4 * 16, "r", world_size=1, worker_id=0)

        # Mapped once, as a worker does at registration, and kept.
        seg = Segment(reg["shm_name"], reg["pool_size"])

        def whole():
            # Touching a page past a truncation would SIGBUS this test.
            assert os.stat(seg.path).st_size >= reg["pool_size"], "the segment is still truncated"

        def store(seed):
            ctx = c.prepare_store(key, 7)["context"]
            if ctx["slots"]:
                whole()
            data = {}
            for slot, idx in zip(ctx["slots"], ctx["chunk_indices"]):
                data[idx] = bytes([(seed + idx) % 256]) * slot["length"]
                seg.write(slot["offset"], data[idx])
            return data, c.commit_store(key, 7)

        def retrieve():
            r = c.prepare_retrieve(key, 7)
            if r["success"]:
                whole()
            out = [seg.read(s["offset"], s["length"]) for s in r["context"].get("slots", [])] if r["success"] else None
            assert c.commit_retrieve(key, 7) is True
            return out

        data, ok = store(1)
        assert ok is True and len(data) == 4
        assert retrieve() == [data[i] for i in range(4)]
        truncate_like_a_careless_worker(reg["shm_name"])
        assert retrieve() is None, "nothing from before the loss is handed out"
        srv.wait_log("restored")
        # Same name, same size: the worker needs no new registration.
        data, ok = store(2)
        assert ok is True and len(data) == 4
        assert retrieve() == [data[i] for i in range(4)]
        s = http_json(srv.http)["storage_manager"]["l1_manager"]
        assert s["shm_name"] == reg["shm_name"] and s["pool_size"] == reg["pool_size"]
        seg.close()
    assert srv.proc.poll() is None
    assert srv.stop() == 0
