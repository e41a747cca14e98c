"""systemd readiness and watchdog: lmcd speaks the sd_notify datagram
protocol itself. The test owns the datagram socket that plays systemd's
$NOTIFY_SOCKET, sets WATCHDOG_USEC, and checks what arrives and when; and
that contrib/lmcd.service is a Type=notify unit systemd would accept."""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import READY_LINE, ROOT

from obs_load import server_args


class NotifySocket:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.path = path

    def recv(self, timeout):
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except socket.timeout:
            return None

    def until(self, text, timeout):
        """Messages received until one contains text (bounded)."""
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.recv(max(0.01, deadline - time.monotonic()))
            if m is None:
                break
            got.append((time.monotonic(), m))
            if text in m:
                return got
        raise AssertionError(f"no {text!r} within {timeout}s; got {got}")

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    n = NotifySocket(str(tmp_path / "notify.sock"))
    yield n
    n.close()


def test_ready_after_ready_line_then_watchdog_and_stopping(lmcd_factory, notify):
    srv = lmcd_factory(server_args(), env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "300000"}, ready=False)
    msgs = notify.until("READY=1", 10)
    assert READY_LINE in srv.log(), "READY=1 comes after the ready line"
    assert "STATUS=serving" in msgs[-1][1]
    pings = []
    deadline = time.monotonic() + 10
    while len(pings) < 4 and time.monotonic() < deadline:
        m = notify.recv(2.0)
        if m == "WATCHDOG=1":
            pings.append(time.monotonic())
    assert len(pings) == 4, "WATCHDOG=1 keeps coming from the loop"
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # every WatchdogSec/2 (0.15 s): well inside the 0.3 s systemd allows,
    # with room for a loaded machine
    assert all(0.05 < g < 1.5 for g in gaps), gaps
    srv.signal(signal.SIGTERM)
    notify.until("STOPPING=1", 10)
    assert srv.proc.wait(15) == 0


def test_no_watchdog_without_usec_and_abstract_socket(lmcd_factory, tmp_path):
    name = f"lmcd-notify-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        srv = lmcd_factory(server_args(), env={"NOTIFY_SOCKET": "@" + name}, ready=False)
        s.settimeout(10)
        assert "READY=1" in s.recv(4096).decode()
        s.settimeout(1.0)
        with pytest.raises(socket.timeout):
            s.recv(4096)  # no WATCHDOG_USEC: no pings
        assert srv.stop() == 0
    finally:
        s.close()


def test_watchdog_pid_of_another_process_is_ignored(lmcd_factory, notify):
    srv = lmcd_factory(server_args(), env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000",
                                           "WATCHDOG_PID": "1"}, ready=False)
    notify.until("READY=1", 10)
    assert notify.recv(1.0) is None, "WATCHDOG_PID names another process: no pings"
    assert srv.stop() == 0


def test_plugins_do_not_inherit_notify_socket(lmcd_factory, notify, tmp_path):
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    out = tmp_path / "env.txt"
    script = plugdir / "envdump.sh"
    script.write_text(f"#!/bin/sh\nenv > {out}.tmp && mv {out}.tmp {out}\nsleep 30\n")
    script.chmod(0o755)
    srv = lmcd_factory(server_args(["--runtime-plugin-locations", str(plugdir)]),
                       env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "5000000"}, ready=False)
    notify.until("READY=1", 10)
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    env = out.read_text()
    assert "LMCACHE_RUNTIME_PLUGIN_CONFIG" in env, "the plugin ran"
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
    assert srv.stop() == 0


def test_bad_notify_socket_is_harmless(lmcd_factory, tmp_path):
    srv = lmcd_factory(server_args(), env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    srv.wait_log("cannot tell systemd we are ready")  # logged just after the ready line
    assert srv.stop() == 0


def test_service_unit():
    path = os.path.join(ROOT, "contrib", "lmcd.service")
    unit = open(path).read()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "ProtectSystem=strict", "PrivateTmp=true",
                 "RuntimeDirectory=lmcd", "--shm-name ", "--host ipc:///run/lmcd/"):
        assert line in unit, line
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed: the unit's syntax is not verified here")
    r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60)
    # verify also complains that /usr/local/bin/lmcd does not exist on this machine; nothing else may fail
    errors = [l for l in (r.stdout + r.stderr).splitlines() if l.strip() and "lmcd: " not in l
              and "not executable" not in l and "No such file" not in l and "Command /usr/local/bin/lmcd" not in l]
    assert not errors, errors
