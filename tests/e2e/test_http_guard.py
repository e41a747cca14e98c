"""HTTP access and robustness (issue 11 items 7 and 8, docs/security.md).

Item 7: the bearer token, Host/Origin checks on mutations (a cross-site
form POST or a DNS-rebinding page must not clear the cache), /config
redaction, no non-loopback bind without a token.
Item 8: half-open connections (slowloris) must not starve /healthcheck,
HTTP must leave descriptors for ZeroMQ under RLIMIT_NOFILE 1024, and
SIGTERM must stop lmcd at once during a flood. Load is bounded: at most
1500 sockets, loopback only.
"""
import errno
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import time

import pytest

import conftest
from conftest import LMCD, wait_for
from lmcd_client import Client, http_text, make_key

CHUNK = 16
TOKEN = "t0ken-for-the-e2e-test-0123456789"
FLOOD = 1500


def request(srv, method, path, headers=None, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=timeout)
    try:
        c.request(method, path, body=b"" if method == "POST" else None, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace"), dict(r.getheaders())
    finally:
        c.close()


def objects(srv):
    st = json.loads(request(srv, "GET", "/status")[1])
    return st["storage_manager"]["l1_manager"]["total_object_count"]


def store_one(srv):
    with Client(srv.url) as c:
        assert c.store_inline(make_key("m", list(range(CHUNK)), 0, CHUNK, "r", worker_id=0), [b"k" * 256]) == 1
    assert objects(srv) == 1


def metric(srv, name):
    for line in http_text(srv.http).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


def server_args(extra=()):
    return ["--chunk-size", str(CHUNK), "--l1-size-gb", "0.05"] + list(extra)


# ---------------------------------------------------------------- item 7


def test_http_cross_site_posts_cannot_clear_the_cache(lmcd_factory):
    srv = lmcd_factory(server_args())
    store_one(srv)
    own = f"127.0.0.1:{srv.http_port}"
    forged = [
        # a form on another site, posted by the operator's browser
        {"Host": own, "Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
        # a sandboxed or privacy-redirected form
        {"Host": own, "Origin": "null"},
        # a DNS-rebinding page: its own name in Host, same-origin Origin
        {"Host": f"rebind.evil.example:{srv.http_port}", "Origin": f"http://rebind.evil.example:{srv.http_port}"},
        # an old browser without Origin, and a modern one saying cross-site
        {"Host": own, "Referer": "http://evil.example/page"},
        {"Host": own, "Sec-Fetch-Site": "cross-site"},
    ]
    for h in forged:
        status, body, _ = request(srv, "POST", "/clear-cache", h)
        assert status == 403, (h, status, body)
        status, _, _ = request(srv, "POST", "/api/plugins/restart?path=/x.py", h)
        assert status == 403, h
    assert objects(srv) == 1, "a forged request cleared the cache"
    assert metric(srv, 'lmcd_http_refused_total{reason="host"}') == 2
    assert metric(srv, 'lmcd_http_refused_total{reason="origin"}') == 8
    srv.wait_log("HTTP mutation from 127.0.0.1 refused (403)")
    # programs (no Origin) and the server's own origin are served as before
    assert request(srv, "POST", "/clear-cache", {"Host": own, "Origin": f"http://{own}"})[0] == 200
    store_one(srv)
    assert request(srv, "POST", "/clear-cache", {"Host": f"localhost:{srv.http_port}"})[0] == 200
    assert objects(srv) == 0


def test_http_allowed_hosts_admit_a_proxy_name(lmcd_factory):
    srv = lmcd_factory(server_args(["--http-allowed-hosts", "lmcd.internal, other"]))
    assert request(srv, "POST", "/clear-cache", {"Host": f"LMCD.internal:{srv.http_port}"})[0] == 200
    assert request(srv, "POST", "/clear-cache", {"Host": "nope.internal"})[0] == 403


def test_http_token_guards_mutations(lmcd_factory):
    srv = lmcd_factory(server_args(), env={"LMCD_HTTP_TOKEN": TOKEN})
    store_one(srv)
    status, body, headers = request(srv, "POST", "/clear-cache")
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer"), body
    assert request(srv, "POST", "/clear-cache", {"Authorization": "Bearer " + TOKEN[:-1] + "x"})[0] == 401
    assert request(srv, "POST", "/clear-cache", {"Authorization": TOKEN})[0] == 401
    assert objects(srv) == 1
    assert metric(srv, 'lmcd_http_refused_total{reason="token"}') == 3
    assert request(srv, "GET", "/healthcheck")[0] == 200, "reads need no token"
    # the token is what counts: even a cross-site looking request carrying it is no forgery
    assert request(srv, "POST", "/clear-cache", {"Authorization": "bearer " + TOKEN})[0] == 200
    assert objects(srv) == 0
    # lmcd-cli sends $LMCD_HTTP_TOKEN
    env = dict(os.environ, LMCD_HTTP_TOKEN=TOKEN)
    r = subprocess.run([conftest.LMCD_CLI, "--http-port", str(srv.http_port), "plugins", "restart", "/nope.py"],
                       capture_output=True, text=True, timeout=20, env=env)
    assert "401" not in r.stdout + r.stderr and "unauthorized" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_http_config_is_redacted_without_the_token(lmcd_factory):
    extra = '{"hf_token": "s3cret-one", "upstream": {"url": "http://inner:9/", "retries": 3}}'
    # no Redis listens there: the adapter starts and reconnects in the background
    adapter = '{"type": "resp", "host": "127.0.0.1", "port": %d, "password": "pw-two"}' % conftest.free_port()
    for env, authed in (({}, False), ({"LMCD_HTTP_TOKEN": TOKEN}, False), ({"LMCD_HTTP_TOKEN": TOKEN}, True)):
        srv = lmcd_factory(server_args(["--runtime-plugin-config", extra, "--l2-adapter", adapter]), env=env)
        for path in ("/config", "/conf", "/api/config"):
            status, body, _ = request(srv, "GET", path, {"Authorization": "Bearer " + TOKEN} if authed else {})
            assert status == 200
            for secret in ("s3cret-one", "http://inner:9/", "pw-two"):
                assert (secret in body) == authed, (path, env, secret, body)
            assert ("<redacted>" in body) != authed
            if not authed:
                tree = json.loads(body)
                assert "127.0.0.1" in body, "non-secret values stay"
        assert TOKEN not in body, "the token itself is never shown"
        srv.stop()


def run_lmcd(*args, env=None):
    return subprocess.run([LMCD] + list(args), capture_output=True, text=True, timeout=10,
                          env=dict(os.environ, **(env or {})))


def test_http_non_loopback_bind_needs_a_token():
    # --print-config parses and validates everything, then exits without binding
    r = run_lmcd("--http-host", "0.0.0.0", "--print-config")
    assert r.returncode == 2 and "--http-auth-token" in r.stderr and "--http-allow-insecure" in r.stderr, r.stderr
    r = run_lmcd("--http-host", "0.0.0.0", "--http-allow-insecure", "--print-config")
    assert r.returncode == 0, r.stderr
    r = run_lmcd("--http-host", "0.0.0.0", "--print-config", env={"LMCD_HTTP_TOKEN": TOKEN})
    assert r.returncode == 0 and TOKEN not in r.stdout, r.stderr
    r = run_lmcd("--http-auth-token", "short", "--print-config")
    assert r.returncode == 2 and "at least 16" in r.stderr
    r = run_lmcd("--http-host", "localhost", "--print-config")
    assert r.returncode == 0


# ---------------------------------------------------------------- item 8


@pytest.fixture
def enough_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, FLOOD + 1024)
    if want < FLOOD + 256:
        pytest.skip(f"the test needs {FLOOD + 256} descriptors (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Slowloris:
    """n connections that send half a request and then nothing."""

    def __init__(self, port, n):
        self.socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            self.socks.append(s)
        time.sleep(0.2)
        for s in self.socks:
            try:
                s.send(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            except OSError:
                pass

    def close(self):
        for s in self.socks:
            s.close()
        self.socks = []


def timed_health(srv, timeout=5.0):
    t0 = time.monotonic()
    status, body, _ = request(srv, "GET", "/healthcheck", timeout=timeout)
    return status, time.monotonic() - t0


def test_http_slowloris_does_not_starve_healthcheck(lmcd_factory, enough_fds):
    srv = lmcd_factory(server_args())
    flood = Slowloris(srv.http_port, FLOOD)
    try:
        for _ in range(3):
            status, took = timed_health(srv)  # raises on timeout
            assert status == 200, status
        assert metric(srv, 'lmcd_http_refused_total{reason="evicted_cap"}') > 0
        assert metric(srv, "lmcd_http_connections") <= 256
    finally:
        flood.close()
    srv.wait_log("at the cap of 256")


def test_http_slow_headers_are_closed_after_the_timeout(lmcd_factory):
    srv = lmcd_factory(server_args(["--http-timeout-seconds", "2"]))
    s = socket.create_connection(("127.0.0.1", srv.http_port))
    try:
        s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + 2.2
        while time.monotonic() < deadline:  # trickle a header byte now and then, as slowloris does
            s.sendall(b"X-A: b\r\n")
            time.sleep(0.5)
        assert timed_health(srv)[0] == 200  # a new connection sweeps the stale one
        s.settimeout(5)
        try:
            assert s.recv(100) == b"", "the slow connection was closed"
        except ConnectionResetError:
            pass
    finally:
        s.close()
    assert metric(srv, 'lmcd_http_refused_total{reason="evicted_slow"}') >= 1


def test_http_flood_leaves_descriptors_for_zeromq(lmcd_factory, enough_fds, tmp_path, monkeypatch):
    prlimit = "/usr/bin/prlimit"
    if not os.path.exists(prlimit):
        pytest.skip("needs prlimit (util-linux)")
    wrapper = tmp_path / "lmcd-1024"
    wrapper.write_text(f'#!/bin/sh\nexec {prlimit} --nofile=1024:1024 {LMCD} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(conftest, "LMCD", str(wrapper))
    # even an operator's larger cap stays within a quarter of the descriptors
    srv = lmcd_factory(server_args(["--http-max-connections", "1000"]))
    srv.wait_log("--http-max-connections 1000 lowered to 256")
    flood = Slowloris(srv.http_port, FLOOD)
    clients = []
    try:
        time.sleep(1.0)
        fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
        assert fds < 1024 - 300, f"HTTP holds {fds} of 1024 descriptors"
        for i in range(100):
            c = Client(srv.url, timeout=5.0)
            clients.append(c)
            assert c.noop() == "OK", f"ZeroMQ client {i} not served during the HTTP flood"
        assert timed_health(srv)[0] == 200
    finally:
        for c in clients:
            c.close()
        flood.close()


def test_http_sigterm_during_a_flood_exits_at_once(lmcd_factory, enough_fds):
    srv = lmcd_factory(server_args())
    flood = Slowloris(srv.http_port, FLOOD)
    try:
        assert timed_health(srv)[0] == 200
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        srv.proc.wait(30)
        took = time.monotonic() - t0
    finally:
        flood.close()
    assert srv.proc.returncode == 0
    assert took < 5.0, f"SIGTERM took {took:.1f} s during the flood"


def test_http_plugins_get_the_token_from_the_flag(lmcd_factory, tmp_path):
    """A plugin may call the API: with --http-auth-token it finds the token in its environment."""
    plugin = tmp_path / "clear.py"
    plugin.write_text(
        "import json, os, urllib.request\n"
        "cfg = json.loads(os.environ['LMCACHE_RUNTIME_PLUGIN_CONFIG'])\n"
        "port = cfg['http_config']['http_port']\n"
        "assert 'http_auth_token' not in cfg['http_config']\n"
        "req = urllib.request.Request(f'http://127.0.0.1:{port}/clear-cache', data=b'', method='POST',\n"
        "    headers={'Authorization': 'Bearer ' + os.environ['LMCD_HTTP_TOKEN']})\n"
        "print('clear-cache status', urllib.request.urlopen(req, timeout=5).status)\n")
    srv = lmcd_factory(server_args(["--http-auth-token", TOKEN, "--runtime-plugin-locations", str(plugin)]))
    srv.wait_log("clear-cache status 200")


def test_http_slow_bodies_do_not_starve_healthcheck(lmcd_factory):
    """A request is only safe from eviction once it has fully arrived: POSTs
    that trickle a huge body hold no slot against a new client."""
    srv = lmcd_factory(server_args(["--http-max-connections", "16", "--http-timeout-seconds", "60"]))
    socks = []
    try:
        for _ in range(48):
            s = socket.create_connection(("127.0.0.1", srv.http_port))
            s.sendall(b"POST /clear-cache HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\nab")
            socks.append(s)
            time.sleep(0.03)  # lmcd has read its headers before the next one comes
        time.sleep(0.3)
        for s in socks:
            try:
                s.sendall(b"c")
            except OSError:
                pass
        status, took = timed_health(srv)
        assert status == 200
        assert metric(srv, 'lmcd_http_refused_total{reason="evicted_cap"}') >= 1
    finally:
        for s in socks:
            s.close()
