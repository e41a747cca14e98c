"""`lmcd-cli top`: the dashboard in a terminal. It runs on a real
pseudo-terminal here (Python's pty), redraws with what /status says,
quits on `q`, and gives the terminal back as it found it."""
import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import termios
import time

from conftest import LMCD_CLI, free_port
from lmcd_client import http_json
from obs_load import run_load, server_args


def read_until(fd, pattern, timeout):
    buf, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            # judge whole screens only: each starts with home + clear, and one is
            # whole once the next has begun (a pty hands a screen over in pieces)
            screens = buf.split(b"\x1b[H\x1b[2J")[1:-1]
            if screens:
                screen = screens[-1].decode("utf-8", "replace")
                if re.search(pattern, screen):
                    return screen
    raise AssertionError(f"no {pattern!r} within {timeout}s; got:\n{buf.decode('utf-8', 'replace')[-3000:]}")


@contextlib.contextmanager
def top_on_pty(port):
    """lmcd-cli top on a fresh pseudo-terminal: yields (proc, master, slave);
    kills it if the test did not make it quit, and closes the terminal. The
    terminal's modes as they were before top started are in top_on_pty.modes
    (read after the spawn, they may already be top's raw mode)."""
    master, slave = pty.openpty()
    top_on_pty.modes = termios.tcgetattr(slave)
    proc = subprocess.Popen([LMCD_CLI, "top", "--http-port", str(port), "--interval", "0.2"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    try:
        yield proc, master, slave
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
        os.close(slave)


def test_top_on_a_pty_shows_status_and_quits_on_q(lmcd_factory):
    srv = lmcd_factory(server_args())
    done = run_load(srv.url, rounds=12)
    st = http_json(srv.http)
    with top_on_pty(srv.http_port) as (proc, master, slave):
        before = top_on_pty.modes
        screen = read_until(master, r"lookup\s+12\s", 30)
        l1 = st["storage_manager"]["l1_manager"]
        assert f"objects {l1['total_object_count']} " in screen
        assert f"hit {done['hit_chunks']} of {done['requested_chunks']} chunks" in screen
        assert "lmcd.store_inline" in screen and "L2        no tier configured" in screen
        assert "healthy" in screen
        assert not termios.tcgetattr(slave)[3] & termios.ICANON, "non-canonical while it runs"
        # a second screen after more traffic: numbers move
        run_load(srv.url, rounds=2, seed=2)
        read_until(master, r"lookup\s+14\s", 30)
        os.write(master, b"q")
        assert proc.wait(10) == 0
        after = termios.tcgetattr(slave)
    assert after[3] == before[3], "terminal modes restored"
    srv.stop()


def test_top_keeps_trying_when_the_server_is_away():
    with top_on_pty(free_port()) as (proc, master, _):
        read_until(master, r"server unreachable", 10)
        read_until(master, r"server unreachable", 10)  # and again: retried, not fatal
        os.write(master, b"q")
        assert proc.wait(10) == 0


def test_top_iterations_without_a_terminal(lmcd):
    r = subprocess.run([LMCD_CLI, "top", "--http-port", str(lmcd.http_port), "--iterations", "2",
                        "--interval", "0.1"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\x1b[H\x1b[2J") == 2 and "OPERATION" in r.stdout
    bad = subprocess.run([LMCD_CLI, "top", "--interval", "0"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "--interval" in bad.stderr


def test_top_sigint_restores_the_terminal(lmcd):
    with top_on_pty(lmcd.http_port) as (proc, master, slave):
        read_until(master, r"OPERATION", 15)
        assert not termios.tcgetattr(slave)[3] & termios.ICANON
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        lflag = termios.tcgetattr(slave)[3]
    assert lflag & termios.ICANON and lflag & termios.ECHO, "canonical mode and echo are back"
