"""Who may use the cache over ZeroMQ (issue 11 item 6, docs/security.md).

A real second user: the client runs as `nobody` under setpriv, against the
real lmcd on an ipc:// socket in a directory nobody may traverse. Root's
tenant stores a chunk inline; the question each test asks is whether
nobody can read it back.
"""
import os
import shutil
import stat
import subprocess
import tempfile

import grp

import pytest

from conftest import ROOT, wait_for
from lmcd_client import Client, http_text, make_key

CHUNK = 16
MODEL = "e2e/access"
NOBODY_UID = 65534
NOBODY_GID = 65534
SETPRIV = shutil.which("setpriv")
PY = "/usr/bin/python3"

# The second user's client: retrieve_inline of the victim's key, printing
# what came back or "timeout" (no reply: refused, or could not connect).
NOBODY_CLIENT = r'''
import sys
sys.path.insert(0, sys.argv[1])
from lmcd_client import Client, make_key
toks = list(range(16))
with Client(sys.argv[2], timeout=float(sys.argv[3])) as c:
    try:
        got = c.retrieve_inline(make_key("e2e/access", toks, 0, 16, "thief", worker_id=0))
        print("got", len(got), got[0].hex() if got else "")
    except TimeoutError:
        print("timeout")
'''

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not SETPRIV,
                                reason="needs root and setpriv to run a client as a second user")


@pytest.fixture
def ipcdir():
    """A directory every user may traverse (pytest's tmp_path is 0700)."""
    d = tempfile.mkdtemp(prefix="lmcd-access-", dir="/tmp")
    os.chmod(d, 0o755)
    shutil.copy(os.path.join(ROOT, "clients", "python", "lmcd_client.py"), d)
    with open(os.path.join(d, "nobody_client.py"), "w") as f:
        f.write(NOBODY_CLIENT)
    os.chmod(os.path.join(d, "lmcd_client.py"), 0o644)
    os.chmod(os.path.join(d, "nobody_client.py"), 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(ipcdir, url, timeout=1.5, groups=None):
    cmd = [SETPRIV, "--reuid", str(NOBODY_UID), "--regid", str(NOBODY_GID)]
    cmd += ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    cmd += [PY, os.path.join(ipcdir, "nobody_client.py"), ipcdir, url, str(timeout)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ipcdir)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def start_ipc(lmcd_factory, ipcdir, args=(), umask=None):
    url = "ipc://" + os.path.join(ipcdir, "lmcd.sock")
    old = os.umask(umask) if umask is not None else None
    try:
        srv = lmcd_factory(["--host", url, "--chunk-size", str(CHUNK), "--l1-size-gb", "0.05"] + list(args))
    finally:
        if old is not None:
            os.umask(old)
    return srv, url


def plant_secret(url):
    """Root's tenant stores one chunk; returns its bytes."""
    secret = bytes(range(256)) * 4
    with Client(url) as c:
        assert c.store_inline(make_key(MODEL, list(range(16)), 0, 16, "victim", worker_id=0), [secret]) == 1
    return secret


def metric(srv, name):
    for line in http_text(srv.http).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


@needs_root
def test_access_ipc_socket_is_owner_only_whatever_the_umask(lmcd_factory, ipcdir):
    srv, url = start_ipc(lmcd_factory, ipcdir, umask=0)
    mode = stat.S_IMODE(os.stat(url[len("ipc://"):]).st_mode)
    assert mode == 0o600, f"socket mode {mode:o} under umask 0"
    secret = plant_secret(url)
    assert as_nobody(ipcdir, url) == "timeout", "another user read the cache over ipc://"
    with Client(url) as c:  # the owner still can
        assert c.retrieve_inline(make_key(MODEL, list(range(16)), 0, 16, "owner", worker_id=0)) == [secret]


@needs_root
def test_access_ipc_mode_and_group_admit_the_group(lmcd_factory, ipcdir):
    group = grp.getgrgid(NOBODY_GID).gr_name  # --shm-group takes a name (the L1 segment's rule)
    srv, url = start_ipc(lmcd_factory, ipcdir, ["--shm-group", group], umask=0o022)
    st = os.stat(url[len("ipc://"):])
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == NOBODY_GID
    plant_secret(url)
    assert as_nobody(ipcdir, url).startswith("got 1 "), "the --shm-group member could not connect"
    srv2, url2 = start_ipc(lmcd_factory, tempdir_like(ipcdir), ["--ipc-mode", "0600", "--shm-group", group])
    assert stat.S_IMODE(os.stat(url2[len("ipc://"):]).st_mode) == 0o600, "--ipc-mode wins over the group default"


def tempdir_like(ipcdir):
    d = os.path.join(ipcdir, "second")
    os.mkdir(d)
    os.chmod(d, 0o755)
    return d


@needs_root
def test_access_allowed_uids_refuses_other_peers(lmcd_factory, ipcdir):
    # The file admits everyone; only the kernel credentials decide.
    srv, url = start_ipc(lmcd_factory, ipcdir, ["--ipc-mode", "0666", "--allowed-uids", "root"])
    plant_secret(url)
    assert as_nobody(ipcdir, url) == "timeout", "a uid outside --allowed-uids read the cache"
    wait_for(lambda: metric(srv, 'lmcd_refused_total{kind="ipc_peer"}') >= 1, 5, what="refusal counted")
    srv.wait_log("not in --allowed-uids/--allowed-gids")
    with Client(url) as c:
        assert c.noop() == "OK", "the allowed uid is served"


@needs_root
@pytest.mark.parametrize("flag,value", [("--allowed-uids", "nobody"), ("--allowed-gids", str(NOBODY_GID))])
def test_access_allowed_ids_admit_the_listed_peer(lmcd_factory, ipcdir, flag, value):
    srv, url = start_ipc(lmcd_factory, ipcdir, ["--ipc-mode", "0666", flag, value])
    secret = plant_secret(url)  # lmcd's own uid (root) is always allowed
    assert as_nobody(ipcdir, url) == f"got 1 {secret.hex()}"
    assert metric(srv, 'lmcd_refused_total{kind="ipc_peer"}') == 0


def test_access_peer_filters_need_ipc(tmp_path):
    from conftest import LMCD
    r = subprocess.run([LMCD, "--host", "127.0.0.1", "--allowed-uids", "0", "--no-http"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 2 and "needs an ipc:// --host" in r.stderr
    r = subprocess.run([LMCD, "--host", "ipc:///tmp/x.sock", "--allowed-gids", "no-such-group-here", "--no-http"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "unknown or bad id 'no-such-group-here'" in r.stderr
    r = subprocess.run([LMCD, "--ipc-mode", "0400", "--print-config"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--ipc-mode" in r.stderr


def test_access_no_inline_ops_answers_zero_chunks(lmcd_factory):
    srv = lmcd_factory(["--chunk-size", str(CHUNK), "--l1-size-gb", "0.05", "--no-inline-ops"])
    key = make_key(MODEL, list(range(16)), 0, 16, "r", worker_id=0)
    with Client(srv.url) as c:
        assert c.store_inline(key, [b"x" * 512]) == 0, "refused store reports nothing stored"
        assert c.retrieve_inline(key) == []
        assert c.noop() == "OK", "other ops are served"
    assert metric(srv, 'lmcd_refused_total{kind="inline_op"}') == 2
    srv.wait_log("--no-inline-ops")
