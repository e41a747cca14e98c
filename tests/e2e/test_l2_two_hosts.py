"""Two lmcd "hosts" sharing one Redis Cluster: a chunk stored on one is
retrieved bit for bit on the other.

Each lmcd runs in its own network namespace; the 3-master cluster runs in
a third. The namespaces are joined by veth pairs on a bridge inside the
cluster's namespace, addresses in 10.213.<k>.0/24 live only inside them.
The engines (this test) reach each lmcd over a ZeroMQ ipc:// socket and map
its L1 segment in /dev/shm (network namespaces do not split files), so all
TCP traffic stays inside the namespaces. The test creates and removes the
namespaces; without the rights to create them (not root, no CAP_SYS_ADMIN,
no `ip`), it skips and says why.
"""
import json
import os
import random
import shutil
import subprocess

import pytest

from conftest import LMCD, READY_LINE, wait_for
from lmcd_client import Client
from redis_util import RedisCluster, have_redis
from test_engine import CHUNK, Worker, lookup, tokens

IP = shutil.which("ip") or "/usr/sbin/ip"
TIMEOUT = 15.0


def sh(*args, check=True):
    return subprocess.run([IP] + [str(a) for a in args], capture_output=True, text=True, check=check)


class Net:
    """Namespaces r (cluster, bridge), a and b (one lmcd each)."""

    def __init__(self):
        tag = f"{os.getpid() % 100000}"
        self.k = 16 + os.getpid() % 200
        self.ns = {n: f"lmcdt{tag}{n}" for n in "rab"}
        self.made = []
        self.addr = {"r": f"10.213.{self.k}.1", "a": f"10.213.{self.k}.2", "b": f"10.213.{self.k}.3"}

    def up(self):
        for n in "rab":
            sh("netns", "add", self.ns[n])
            self.made.append(self.ns[n])
            self.ex(n, IP, "link", "set", "lo", "up")
        self.ex("r", IP, "link", "add", "br0", "type", "bridge")
        self.ex("r", IP, "addr", "add", self.addr["r"] + "/24", "dev", "br0")
        self.ex("r", IP, "link", "set", "br0", "up")
        for n in "ab":
            host_end, peer_end = f"v{n}{os.getpid() % 100000}", f"p{n}{os.getpid() % 100000}"
            sh("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
            sh("link", "set", host_end, "netns", self.ns[n])
            sh("link", "set", peer_end, "netns", self.ns["r"])
            self.ex(n, IP, "addr", "add", self.addr[n] + "/24", "dev", host_end)
            self.ex(n, IP, "link", "set", host_end, "up")
            self.ex("r", IP, "link", "set", peer_end, "master", "br0")
            self.ex("r", IP, "link", "set", peer_end, "up")

    def prefix(self, n):
        return [IP, "netns", "exec", self.ns[n]]

    def ex(self, n, *cmd):
        return subprocess.run(self.prefix(n) + [str(c) for c in cmd], capture_output=True, text=True, check=True)

    def down(self):
        for ns in reversed(self.made):
            sh("netns", "del", ns, check=False)


def can_netns():
    if os.geteuid() != 0:
        return "not root: creating network namespaces needs CAP_SYS_ADMIN"
    if not os.access(IP, os.X_OK):
        return "no `ip` command (iproute2)"
    probe = f"lmcdtprobe{os.getpid()}"
    r = sh("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"`ip netns add` refused: {r.stderr.strip()}"
    sh("netns", "del", probe, check=False)
    return None


class NsLmcd:
    """lmcd inside a namespace, reached over ipc://."""

    def __init__(self, net, n, tmp_path, adapter):
        self.sock = os.path.join(str(tmp_path), f"lmcd-{n}.sock")
        self.url = "ipc://" + self.sock
        self.log_path = os.path.join(str(tmp_path), f"lmcd-{n}.log")
        self._log = open(self.log_path, "wb")
        args = net.prefix(n) + [LMCD, "--host", self.url, "--no-http", "--chunk-size", str(CHUNK),
                                "--l1-size-gb", "0.02", "--l2-adapter", json.dumps(adapter)]
        env = dict(os.environ, LMCACHE_LOG_LEVEL="INFO")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)
        wait_for(self.ready, TIMEOUT, what=f"lmcd in namespace {n}")

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"lmcd exited with {self.proc.returncode}:\n{self.log()}")
        return READY_LINE in self.log()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def net():
    why = can_netns()
    if why:
        pytest.skip(f"two-host test needs network namespaces: {why}")
    n = Net()
    try:
        n.up()
        yield n
    finally:
        n.down()


@pytest.mark.skipif(not have_redis(), reason="redis-server not installed (apt-get install redis-server)")
def test_two_hosts_share_one_redis_cluster(net, tmp_path):
    cl = RedisCluster(tmp_path, n=3, host=net.addr["r"], prefix=net.prefix("r"), ports=[7001, 7002, 7003])
    servers, clients = [], []
    try:
        adapter = {"type": "valkey", "startup_nodes": f"{net.addr['r']}:7001", "cluster_mode": True,
                   "key_prefix": "shared", "connection_timeout": 2.0, "request_timeout": 2.0}
        a = NsLmcd(net, "a", tmp_path, adapter)
        servers.append(a)
        b = NsLmcd(net, "b", tmp_path, adapter)
        servers.append(b)
        ca, sa, cb, sb = (Client(u, timeout=TIMEOUT) for u in (a.url, a.url, b.url, b.url))
        clients += [ca, sa, cb, sb]
        wa, wb = Worker(ca, 1), Worker(cb, 2)
        n = 8
        toks = tokens(4242, n)
        written = wa.store(toks, "on-a", 0, n, random.Random(3))
        assert sorted(written) == list(range(n))
        sa.end_session("on-a")
        wait_for(lambda: cl.dbsize() >= n, TIMEOUT, what="host a's chunks in the cluster")
        per_node = [nd.dbsize() for nd in cl.nodes]
        assert sum(1 for x in per_node if x) >= 2, f"keys not spread over the masters: {per_node}"
        # host b never saw these tokens: its L1 is empty, the cluster has them
        assert lookup(sb, toks, "on-b") == n, "host b found host a's chunks in the shared cluster"
        got = wb.retrieve(toks, "on-b", 0, n)
        assert got == [written[i] for i in range(n)], "bytes differ across hosts"
        sb.end_session("on-b")
        wa.close()
        wb.close()
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.stop()
        cl.kill()
