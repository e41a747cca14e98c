"""The server's lifecycle, flags, logging and HTTP API, from the real binary."""
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import msgpack
import pytest
import zmq

from conftest import LMCD, READY_LINE, free_port, shm_name, wait_for

LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] LMCache (DEBUG|INFO|WARNING|ERROR|CRITICAL): "
                      r".* \([\w.]+:\d+:[\w.]+\)$")


def http_get(srv, path, timeout=5.0):
    try:
        with urllib.request.urlopen(srv.http + path, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def http_post(srv, path, timeout=5.0):
    req = urllib.request.Request(srv.http + path, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def zmq_call(url, typ, *payload, timeout_ms=3000):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(url)
    try:
        s.send_multipart([msgpack.packb(0), msgpack.packb(typ)] + [msgpack.packb(p) for p in payload])
        if not s.poll(timeout_ms):
            raise AssertionError(f"no reply to type {typ} within {timeout_ms} ms")
        frames = s.recv_multipart()
        return [msgpack.unpackb(f) for f in frames[2:]]
    finally:
        s.close()


def run_lmcd(*args, timeout=10):
    return subprocess.run([LMCD, *args], capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ flags

@pytest.mark.parametrize("args,needle", [
    (["--l1-size-gb", "abc"], "argument --l1-size-gb: invalid float value: 'abc'"),
    (["--l1-size-gb", "-1"], "argument --l1-size-gb"),
    (["--eviction-policy", "FIFO"], "invalid choice: 'FIFO'"),
    (["--eviction-trigger-watermark", "2"], "--eviction-trigger-watermark"),
    (["--port", "0"], "argument --port"),
    (["--http-port", "99999"], "argument --http-port"),
    (["--runtime-plugin-config", "{nope"], "--runtime-plugin-config is not valid JSON"),
    (["--l2-adapter", "{\"type\": \"tape\"}"], "unknown L2 adapter type 'tape'"),
    (["--config", "/nonexistent/lmcd.json"], "argument --config"),
    (["--hash-algorithm", "sha256_cbor"], "needs vLLM"),
    (["--protocol", "lmcache-2501"], "invalid choice: 'lmcache-2501'"),
    (["--what"], "unrecognized arguments: --what"),
])
def test_server_bad_flag_exits_2_with_one_line(args, needle):
    r = run_lmcd(*args)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and lines[0].startswith("lmcd: error: ")
    assert r.stdout == ""


def test_server_help_version_protocol_help():
    r = run_lmcd("--help")
    assert r.returncode == 0 and "--l1-size-gb" in r.stdout and "--runtime-plugin-locations" in r.stdout
    r = run_lmcd("--version")
    assert r.returncode == 0 and re.match(r"lmcd \d+\.\d+\.\d+", r.stdout)
    r = run_lmcd("--protocol", "help")
    assert r.returncode == 0 and "lmcache-2604" in r.stdout and "lmcache-2609" in r.stdout
    assert "prepare_store" in r.stdout.lower()


def test_server_print_config_is_the_plugin_json_tree(tmp_path):
    r = run_lmcd("--print-config", "--l1-size-gb", "10", "--runtime-plugin-config", '{"a": 1}')
    assert r.returncode == 0
    tree = json.loads(r.stdout)
    assert list(tree) == ["mp_config", "storage_manager_config", "obs_config", "http_config",
                          "runtime_plugin_extra_config"]
    assert tree["storage_manager_config"]["l1_manager_config"]["memory_config"]["size_in_bytes"] == 10 * 2**30
    assert tree["mp_config"]["runtime_plugin_config"]["extra_config"] == {"a": 1}
    # the printed tree is a valid --config file; flags still win over it
    cfg = tmp_path / "lmcd.json"
    cfg.write_text(r.stdout)
    r2 = run_lmcd("--config", str(cfg), "--chunk-size", "128", "--print-config")
    assert r2.returncode == 0, r2.stderr
    t2 = json.loads(r2.stdout)
    assert t2["mp_config"]["chunk_size"] == 128
    assert t2["storage_manager_config"]["l1_manager_config"]["memory_config"]["size_in_bytes"] == 10 * 2**30


# ------------------------------------------------------------------ lifecycle

def test_server_ready_fast_and_logs_in_lmcache_format(lmcd_factory):
    t0 = time.monotonic()
    srv = lmcd_factory()
    ready_s = time.monotonic() - t0
    assert ready_s < 2.0, f"ready after {ready_s:.3f}s"
    log = srv.log()
    order = ["Starting L1EvictionController...", "Using blake3 hash function",
             "BLAKE3 one-input compression: ", "Computed NONE_HASH=b\"~>\\xff\\x9e", "TokenHasher initialized: chunk_size=256, hash_algorithm=blake3",
             "LMCache ZMQ cache server is running on", "Starting LMCache HTTP server on http://127.0.0.1",
             READY_LINE]
    pos = [log.find(x) for x in order]
    assert all(p >= 0 for p in pos), (order, pos, log)
    assert pos == sorted(pos), log
    for line in log.splitlines():
        assert LOG_LINE.match(line), line
    assert "\x1b[" not in log, "no colour when stderr is not a terminal"
    assert srv.stop() == 0


def test_server_blake3_one_block_choice_logged_and_overridable(lmcd_factory):
    # Timed at start by default (both measured on x86), named by the environment otherwise.
    srv = lmcd_factory()
    line = next(x for x in srv.log().splitlines() if "BLAKE3 one-input compression: " in x)
    assert re.search(r"compression: (portable|sse41) \((timed at start: portable [0-9.]+ ns, sse41 [0-9.]+ ns "
                     r"per block|no SSE4\.1)\); many inputs: \w+ lanes", line), line
    assert srv.stop() == 0
    srv = lmcd_factory(env={"LMCD_BLAKE3_ONE": "portable"})
    assert "BLAKE3 one-input compression: portable (set, not timed)" in srv.log(), srv.log()
    assert srv.stop() == 0


def test_server_sigterm_stops_in_order_and_unlinks_segment(lmcd_factory):
    name = shm_name("seg")
    srv = lmcd_factory(["--shm-name", name])
    assert os.path.exists(f"/dev/shm/{name}")
    assert oct(os.stat(f"/dev/shm/{name}").st_mode & 0o777) == "0o600"
    assert srv.stop() == 0
    log = srv.log()
    steps = ["Received SIGTERM", "Stopping runtime plugins", "LMCache server stopped"]
    pos = [log.find(x) for x in steps]
    assert all(p >= 0 for p in pos) and pos == sorted(pos), log
    assert "LMCache server stopped" in log.strip().splitlines()[-1]
    assert not os.path.exists(f"/dev/shm/{name}")


def test_server_sigint_is_graceful_too(lmcd_factory):
    srv = lmcd_factory()
    srv.signal(signal.SIGINT)
    assert srv.proc.wait(10) == 0
    assert "LMCache server stopped" in srv.log()


def test_server_log_level_env_and_flag_and_log_file(lmcd_factory, tmp_path):
    path = tmp_path / "extra.log"
    srv = lmcd_factory(["--log-file", str(path)], env={"LMCACHE_LOG_LEVEL": "WARNING"}, ready=False)
    # INFO lines are filtered, so the ready line never shows: wait for the socket instead
    wait_for(lambda: srv.proc.poll() is None and zmq_call(srv.url, 21) == [256], what="GET_CHUNK_SIZE")
    srv.stop()
    assert "Using blake3 hash function" not in srv.log()
    srv2 = lmcd_factory(["--log-level", "DEBUG", "--log-file", str(path)], env={"LMCACHE_LOG_LEVEL": "ERROR"})
    srv2.stop()
    assert "LMCache DEBUG:" in srv2.log() or "Using blake3" in srv2.log()
    assert READY_LINE in path.read_text()


def test_server_ipc_host(lmcd_factory, tmp_path):
    sock = tmp_path / "lmcd.sock"
    srv = lmcd_factory(["--host", f"ipc://{sock}"])
    assert zmq_call(f"ipc://{sock}", 21) == [256]
    assert srv.stop() == 0


def test_server_port_in_use_fails_cleanly(lmcd_factory):
    a = lmcd_factory()
    proc = subprocess.run([LMCD, "--host", "127.0.0.1", "--port", str(a.port), "--http-port", str(free_port())],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1
    assert "cannot bind the ZeroMQ ROUTER" in proc.stderr
    assert zmq_call(a.url, 24) == ["OK"], "the first server is unaffected"


# ------------------------------------------------------------------ HTTP

def test_server_http_routes_both_path_styles(lmcd):
    for prefix in ("", "/api"):
        code, body = http_get(lmcd, prefix + "/healthcheck")
        assert code == 200 and json.loads(body) == {"status": "healthy"}
        code, body = http_get(lmcd, prefix + "/status")
        st = json.loads(body)
        assert code == 200 and st["is_healthy"] is True and st["chunk_size"] == 256
        assert "l1_manager" in st["storage_manager"]
        code, body = http_get(lmcd, prefix + "/version")
        assert code == 200 and json.loads(body)["server"] == "lmcd"
        code, body = http_get(lmcd, prefix + "/config")
        assert code == 200 and json.loads(body)["http_config"]["http_port"] == lmcd.http_port
        code, body = http_get(lmcd, prefix + "/conf")
        assert code == 200 and list(json.loads(body)) == ["mp", "storage_manager", "observability", "http"]
        code, body = http_get(lmcd, prefix + "/plugins")
        assert code == 200 and json.loads(body) == []
    code, body = http_get(lmcd, "/")
    assert code == 200 and json.loads(body) == {"status": "ok", "service": "LMCache HTTP API"}
    code, body = http_get(lmcd, "/metrics")
    assert code == 200 and "lmcd_requests_total" in body
    code, body = http_post(lmcd, "/clear-cache")
    assert code == 200 and json.loads(body) == {"status": "ok"}
    code, body = http_get(lmcd, "/no/such/path")
    assert code == 404 and json.loads(body)["error"] == "not found"
    code, body = http_post(lmcd, "/status")
    assert code == 405
    code, body = http_post(lmcd, "/plugins/restart?path=/nope.py")
    assert code == 404


def test_server_no_http(lmcd_factory):
    srv = lmcd_factory(["--no-http"])
    assert "HTTP disabled" in srv.log()
    assert zmq_call(srv.url, 22, None) == [True]
    with pytest.raises(OSError):
        urllib.request.urlopen(srv.http + "/healthcheck", timeout=1)


# ------------------------------------------------------------------ ZeroMQ while plugins run

def test_server_answers_zmq_while_plugins_flood(lmcd_factory, tmp_path):
    flood = tmp_path / "flood.sh"
    flood.write_text("#!/bin/bash\nwhile :; do echo flooding-the-log-with-a-long-line-$RANDOM; done\n")
    binary = tmp_path / "binary.py"
    binary.write_text("#!/usr/bin/python3\nimport os, time\n"
                      "for _ in range(2000):\n    os.write(1, os.urandom(512))\ntime.sleep(60)\n")
    srv = lmcd_factory(["--runtime-plugin-locations", str(flood), str(binary)])
    srv.wait_log("Launched runtime plugin: " + str(binary))
    deadline = time.monotonic() + 3
    n = 0
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        assert zmq_call(srv.url, 21) == [256]
        assert zmq_call(srv.url, 24) == ["OK"]
        assert zmq_call(srv.url, 22, None) == [True]
        assert time.monotonic() - t0 < 1.0
        n += 1
    assert n > 3
    assert srv.stop() == 0


def test_server_second_signal_exits_at_once(lmcd_factory, tmp_path):
    """A plugin that ignores SIGTERM holds the graceful stop for its grace
    period; a second SIGTERM ends lmcd at once, still unlinking L1, and the
    plugin dies with it (parent-death signal)."""
    name = shm_name("fast")
    pidfile = tmp_path / "plugin.pid"
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text("#!/usr/bin/python3\nimport os, signal, time\n"
                        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                        "print('holding on', flush=True)\ntime.sleep(120)\n")
    srv = lmcd_factory(["--shm-name", name, "--runtime-plugin-locations", str(stubborn),
                        "--runtime-plugin-stop-timeout", "60"])
    srv.wait_log("holding on")
    plugin_pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="plugin pid"))
    srv.signal(signal.SIGTERM)
    srv.wait_log("Stopping runtime plugins")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    rc = srv.proc.wait(10)
    assert time.monotonic() - t0 < 5
    assert rc == 128 + signal.SIGTERM
    assert "second signal during shutdown" in srv.log()
    assert not os.path.exists(f"/dev/shm/{name}")

    def plugin_gone():
        try:
            os.kill(plugin_pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{plugin_pid}/stat") as f:  # a zombie until its reaper runs counts as gone
                return f.read().split(") ")[1].startswith("Z")
        except (FileNotFoundError, ProcessLookupError):  # reaped between the kill and the read
            return True
    wait_for(plugin_gone, timeout=10, what="plugin killed by the parent-death signal")


def test_server_flooding_client_is_held_back_and_others_served(lmcd):
    """A client that sends far faster than it reads: lmcd keeps at most a
    bounded number of requests in its pools (ZeroMQ's high-water mark holds
    the rest back), answers every one of them in the end, and serves
    another client meanwhile."""
    ctx = zmq.Context.instance()
    flood = ctx.socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.SNDHWM, 100000)
    flood.setsockopt(zmq.RCVHWM, 100000)
    flood.connect(lmcd.url)
    ping = msgpack.packb(22)
    nil = msgpack.packb(None)
    sent = 0
    deadline = time.monotonic() + 10
    try:
        while sent < 30000 and time.monotonic() < deadline:
            try:
                flood.send_multipart([msgpack.packb(sent), ping, nil], zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                break
        peak = 0
        for _ in range(5):
            _, body = http_get(lmcd, "/status")
            peak = max(peak, json.loads(body)["server"]["pools"]["in_flight"])
            assert zmq_call(lmcd.url, 22, None, timeout_ms=3000) == [True], "another client is served"
        assert peak <= 8192
        got = 0
        end = time.monotonic() + 60
        while got < sent and time.monotonic() < end:
            if flood.poll(1000):
                frames = flood.recv_multipart()
                assert msgpack.unpackb(frames[2]) is True
                got += 1
        assert got == sent, f"{got} of {sent} answered"
    finally:
        flood.close()


def test_server_http_survives_non_utf8_paths(lmcd):
    for path in ("/%ff", "/api/%c3%28", "/plugins/restart?path=%ff%fe"):
        req = urllib.request.Request(lmcd.http + path, data=b"" if "restart" in path else None,
                                     method="POST" if "restart" in path else "GET")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("expected an HTTP error")
        except urllib.error.HTTPError as e:
            assert e.code in (404, 405)
            json.loads(e.read().decode())
    assert http_get(lmcd, "/healthcheck")[0] == 200, "still serving"


def test_server_rejects_non_utf8_flag_values():
    r = subprocess.run([LMCD, "--host", b"\xff"], capture_output=True, timeout=10)
    assert r.returncode == 2 and b"argument --host: value is not valid UTF-8" in r.stderr


def test_server_sigquit_exits_at_once(lmcd_factory):
    name = shm_name("quit")
    srv = lmcd_factory(["--shm-name", name])
    srv.signal(signal.SIGQUIT)
    assert srv.proc.wait(5) == 128 + signal.SIGQUIT
    assert "Received SIGQUIT: exiting at once" in srv.log()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_server_unhealthy_while_stopping_and_plugins_view_safe(lmcd_factory, tmp_path):
    """During a stop held by a plugin's grace period, /healthcheck answers 503,
    and /plugins hammered by several threads never touches a freed supervisor
    (under SAN=1 a use-after-free would fail this test)."""
    import threading
    stubborn = tmp_path / "stubborn.sh"
    stubborn.write_text("#!/bin/bash\ntrap '' TERM\necho up\nwhile :; do sleep 0.1; done\n")
    srv = lmcd_factory(["--runtime-plugin-locations", str(stubborn), "--runtime-plugin-stop-timeout", "1"])
    srv.wait_log("] up")
    stop = threading.Event()
    errors = []

    def hammer():
        while not stop.is_set():
            try:
                http_get(srv, "/plugins", timeout=2)
                http_post(srv, "/plugins/restart?path=/nope", timeout=2)
            except OSError:
                pass  # the server closing HTTP is fine
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        srv.signal(signal.SIGTERM)
        srv.wait_log("Stopping runtime plugins")
        code, body = http_get(srv, "/healthcheck")
        assert code == 503 and json.loads(body)["status"] == "unhealthy"
        assert srv.proc.wait(15) == 0, srv.log()
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert not errors, errors
