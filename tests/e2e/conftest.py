"""Shared fixtures for lmcd's end-to-end tests.

Every test talks to the real build/lmcd (or $LMCD_BUILD/lmcd) over real
sockets on 127.0.0.1. `lmcd_factory` starts servers on free ports, captures
their stderr log, waits for the ready line, and stops them (SIGTERM, then
SIGKILL after a bound) when the test ends.

Nothing is left behind (issue 11 item 14): every server gets an L1 segment
name under this run's SHM_PREFIX (unless the test names one) and TMPDIR =
RUN_TMP (where plugin config files go); a server that had to be killed has
its segment and config file removed here, and at the end of the session
`leftovers()` must be empty (tests/run.sh checks it again for the whole
suite). Other runs on the same machine use other prefixes.
"""
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("LMCD_BUILD", "build"))
LMCD = os.path.join(BUILD, "lmcd")
LMCD_CLI = os.path.join(BUILD, "lmcd-cli")
READY_LINE = "LMCache cache server is running..."

# This run's names: tests/run.sh exports one prefix for the whole suite.
SHM_PREFIX = os.environ.get("LMCD_TEST_SHM_PREFIX") or f"lmcdt{os.getpid()}_"
RUN_TMP = tempfile.mkdtemp(prefix=f"{SHM_PREFIX}tmp_")
PLUGIN_CONFIG_PREFIX = "lmcd-plugin-config."


def shm_name(tag):
    """A segment name of this run (the end-of-run check covers it)."""
    return f"{SHM_PREFIX}{tag}"


def leftovers():
    """What this run left: segments under SHM_PREFIX, plugin config files in RUN_TMP."""
    shm = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIX)]
    tmp = [os.path.join(RUN_TMP, n) for n in os.listdir(RUN_TMP) if n.startswith(PLUGIN_CONFIG_PREFIX)]
    return sorted(shm + tmp)


def remove_unlocked(paths):
    """Removes the files whose owner lock is free (their lmcd is gone), as lmcd does at start."""
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(p)
        except OSError:
            pass
        finally:
            os.close(fd)

sys.path.insert(0, os.path.join(ROOT, "clients", "python"))


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    """Polls pred() until it returns a truthy value or the bound expires."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Lmcd:
    """One running lmcd process and its captured log."""

    def __init__(self, args, env, tmp_path, cwd=None):
        self.port = free_port()
        self.http_port = free_port()
        self.log_path = os.path.join(str(tmp_path), f"lmcd-{self.port}.log")
        args = list(args)
        if "--shm-name" not in args:
            args += ["--shm-name", shm_name(f"srv{self.port}")]
        if "--l1-init-size-gb" not in args:
            args += ["--l1-init-size-gb", "0"]  # commit per object: many servers, one machine
        self.shm_name = args[args.index("--shm-name") + 1]
        self.args = [LMCD, "--host", "127.0.0.1", "--port", str(self.port),
                     "--http-host", "127.0.0.1", "--http-port", str(self.http_port)] + args
        if "--prometheus-port" not in self.args:  # never the shared default 9090 in tests
            self.args += ["--prometheus-port", "0"]
        full_env = dict(os.environ)
        full_env.setdefault("LMCACHE_LOG_LEVEL", "INFO")
        full_env["TMPDIR"] = RUN_TMP
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=full_env, cwd=cwd or ROOT)

    @property
    def url(self):
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def http(self):
        return f"http://127.0.0.1:{self.http_port}"

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, text, timeout=10.0):
        return wait_for(lambda: text in self.log(), timeout, what=f"log line {text!r}\n--- log ---\n{self.log()}")

    def wait_ready(self, timeout=60.0):
        # Generous: a sanitizer build on a loaded 2-core CI box took over 10 s
        # to start (test_l2_fs_reads_lmcache_directory_with_crc32 under TSan);
        # lmcd exiting instead fails at once below.
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"lmcd exited with {self.proc.returncode}:\n{self.log()}")
            return READY_LINE in self.log()
        wait_for(ready, timeout, what="lmcd ready")
        return self

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout=15.0):
        """SIGTERM and wait; returns the exit code. SIGKILL if it overstays."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"lmcd did not stop within {timeout}s:\n{self.log()}")
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def lmcd_factory(tmp_path):
    """Starts lmcd servers: lmcd_factory(args=[...], env={...}, ready=True)."""
    started = []

    def start(args=(), env=None, ready=True, cwd=None):
        s = Lmcd(args, env, tmp_path, cwd=cwd)
        started.append(s)
        if ready:
            s.wait_ready()
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)  # lets lmcd clean up after itself
            try:
                s.proc.wait(10)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(5)
        if s.proc.returncode is not None and s.proc.returncode < 0:
            # killed (by the test or here): it could not remove its files
            remove_unlocked([f"/dev/shm/{s.shm_name}"] + [p for p in leftovers() if p.startswith(RUN_TMP)])
        if not s._log.closed:
            s._log.close()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """At the end of the session nothing this run created is left."""
    yield
    left = leftovers()
    shutil.rmtree(RUN_TMP, ignore_errors=True)
    for p in left:
        try:
            os.unlink(p)
        except OSError:
            pass
    assert not left, f"the suite left these behind: {left}"


@pytest.fixture
def lmcd(lmcd_factory):
    """One lmcd on its defaults (no plugins), ready."""
    return lmcd_factory()
