"""Real redis-server processes for the L2 end-to-end tests.

`Redis` is one server on a free 127.0.0.1 port (or on a given address, run
through a command prefix such as `ip netns exec NS`); `RedisCluster` forms a
cluster of masters by hand (CLUSTER ADDSLOTSRANGE + MEET) and waits until
every node says `cluster_state:ok`. `resp()` is a small RESP2 client (Debian
ships no python3-redis in the test deps), used only against loopback.
Servers are started with no persistence and killed (SIGKILL) at stop; their
files live under the test's tmp_path.
"""
import os
import shutil
import socket
import subprocess
import time

from conftest import free_port, wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def have_redis():
    return os.access(REDIS_SERVER, os.X_OK)


class RespError(Exception):
    pass


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        return RespError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RespError(f"bad reply type {line!r}")


def resp(port, *args, host="127.0.0.1", timeout=5.0):
    """Sends one command, returns its reply (errors come back as RespError
    values, not raised)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        s.sendall(b"".join(parts))
        return _read_reply(s.makefile("rb"))


class Redis:
    def __init__(self, tmp_path, cluster=False, host="127.0.0.1", port=None, bus_port=None, prefix=(),
                 extra=()):
        self.host = host
        self.port = port or free_port()
        self.bus_port = bus_port or free_port()
        self.cluster = cluster
        self.prefix = list(prefix)
        self.dir = os.path.join(str(tmp_path), f"redis-{host}-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        self.extra = list(extra)
        self.proc = None
        self.id = None
        self.start()

    def start(self):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", self.host, "--dir", self.dir, "--save", "",
                "--appendonly", "no", "--logfile", "redis.log", "--protected-mode", "no"]
        if self.cluster:
            # a generous node timeout: on a loaded CI box a short one lets a master
            # think it lost the majority and answer CLUSTERDOWN
            args += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port), "--cluster-config-file",
                     "nodes.conf", "--cluster-require-full-coverage", "no", "--cluster-node-timeout", "10000"]
        self.proc = subprocess.Popen(self.prefix + args + self.extra, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self._pings, 10, what=f"redis-server on {self.host}:{self.port}")
        except BaseException:
            self.kill()  # never leave a server behind a failed start
            raise
        return self

    def _pings(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}")
        try:
            return self.cmd("PING") == "PONG"
        except OSError:
            return False

    def cmd(self, *args):
        """A command on this server; through redis-cli when it runs behind a
        prefix (another network namespace)."""
        if not self.prefix:
            return resp(self.port, *args, host=self.host)
        out = subprocess.run(self.prefix + [REDIS_CLI, "-h", self.host, "-p", str(self.port)] +
                             [str(a) for a in args], capture_output=True, timeout=10)
        if out.returncode != 0:
            raise OSError(out.stderr.decode())
        text = out.stdout.decode().strip()
        return int(text) if text.lstrip("-").isdigit() else text

    def dbsize(self):
        return int(self.cmd("DBSIZE"))

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class RedisCluster:
    """n masters sharing the 16384 slots evenly."""

    def __init__(self, tmp_path, n=3, host="127.0.0.1", prefix=(), ports=None):
        self.nodes = []
        try:
            self._form(tmp_path, n, host, prefix, ports)
        except BaseException:
            self.kill()  # never leave servers behind a failed start
            raise

    def _form(self, tmp_path, n, host, prefix, ports):
        for i in range(n):
            port = ports[i] if ports else None
            bus = port + 10000 if ports else None
            self.nodes.append(Redis(tmp_path, cluster=True, host=host, port=port, bus_port=bus, prefix=prefix))
        for i, nd in enumerate(self.nodes):
            nd.id = nd.cmd("CLUSTER", "MYID")
            nd.id = nd.id.decode() if isinstance(nd.id, bytes) else nd.id
            lo, hi = 16384 * i // n, 16384 * (i + 1) // n - 1
            r = nd.cmd("CLUSTER", "ADDSLOTSRANGE", lo, hi)
            assert r == "OK", r
        for nd in self.nodes[1:]:
            r = self.nodes[0].cmd("CLUSTER", "MEET", host, nd.port, nd.bus_port)
            assert r == "OK", r
        wait_for(self.converged, 30, interval=0.1, what="cluster state ok on every node")

    def converged(self):
        for nd in self.nodes:
            info = nd.cmd("CLUSTER", "INFO")
            info = info.decode() if isinstance(info, bytes) else info
            # state ok is not enough with require-full-coverage off: every slot must be known
            if ("cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info
                    or f"cluster_known_nodes:{len(self.nodes)}" not in info):
                return False
        return True

    @property
    def seeds(self):
        return ",".join(f"{nd.host}:{nd.port}" for nd in self.nodes)

    def dbsize(self):
        return sum(nd.dbsize() for nd in self.nodes)

    def kill(self):
        for nd in self.nodes:
            nd.kill()
