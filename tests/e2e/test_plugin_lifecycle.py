"""Runtime plugins: what they are told and what survives lmcd (issue 11, items 15, 16).

Real lmcd, real plugin processes; every wait is a bounded poll.
"""
import os
import time

import pytest

from conftest import ROOT, wait_for
from test_plugins import ENV, read_json_file, write


def test_no_http_plugins_get_no_http_config(lmcd_factory, tmp_path):
    out = tmp_path / "cfg.json"
    path = write(tmp_path / "cfg.py",
                 "import os\n"
                 f"open({str(out)!r} + '.tmp', 'w').write(os.environ['LMCACHE_RUNTIME_PLUGIN_CONFIG'])\n"
                 f"os.rename({str(out)!r} + '.tmp', {str(out)!r})\n")
    srv = lmcd_factory(["--no-http", "--runtime-plugin-locations", path], env=ENV)
    cfg = read_json_file(str(out))
    assert "http_config" not in cfg, cfg.get("http_config")
    assert list(cfg)[:3] == ["mp_config", "storage_manager_config", "obs_config"]
    assert srv.stop() == 0


def test_worker_id_in_a_file_name_does_not_skip_it_in_mp_mode(lmcd_factory, tmp_path):
    """LMCache's newest RuntimePluginLauncher skips no file when role is None (MP mode):
    `ROLE_WORKERID_NAME` names such as foo_1_bar.py run like any other."""
    names = ["foo_1_bar.py", "worker_1_test.sh", "x_007_y.py", "worker_0_test.sh", "plain.py"]
    for n in names:
        marker = tmp_path / (n + ".ran")
        if n.endswith(".py"):
            write(tmp_path / n, f"open({str(marker)!r}, 'w').write('1')\n")
        else:
            write(tmp_path / n, f"echo 1 > {marker}\n")
    srv = lmcd_factory(["--runtime-plugin-locations", str(tmp_path)], env=ENV)
    for n in names:
        wait_for(lambda n=n: (tmp_path / (n + ".ran")).exists(), 10, what=f"{n} ran")
    assert "is skipping plugin" not in srv.log()
    srv.stop()


# ---------------------------------------------------------------- item 15: nothing survives lmcd

def proc_start(pid):
    """(state, start time) of pid from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], int(rest[19])
    except (OSError, IndexError, ValueError):
        return None


def ppid_map():
    m = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    m[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return m


def descendants(root):
    m = ppid_map()
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        for c, pp in m.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(procs):
    """Those of {pid: start} still running (same start time, not a zombie)."""
    left = {}
    for pid, start in procs.items():
        st = proc_start(pid)
        if st and st[1] == start and st[0] not in ("Z", "X"):
            left[pid] = st
    return left


def snapshot(pids):
    out = {}
    for p in pids:
        st = proc_start(p)
        if st:
            out[p] = st[1]
    return out


def recorded_pids(tmp_path):
    out = set()
    for f in tmp_path.glob("*.pids"):
        out |= {int(x) for x in f.read_text().split()}
    return out


ESCAPES = {
    # a backgrounded sleep in the plugin's group
    "bg_sleep.sh": "sleep 1000 &\necho $! >> {d}/bg.pids\necho ready\nwait\n",
    # a child that ignores SIGTERM
    "term_ignorer.sh": "bash -c 'trap \"\" TERM; echo $$ >> {d}/ign.pids; while true; do sleep 1; done' &\n"
                       "echo ready\nwait\n",
    # a setsid escapee (its own session and group)
    "escapee.sh": "setsid sleep 1000 &\necho $! >> {d}/esc.pids\necho ready\nwait\n",
    # a double-forked daemon in its own session, orphaned at once
    "daemon.sh": "( setsid bash -c 'echo $$ >> {d}/dmn.pids; exec sleep 1000' & )\necho ready\n"
                 "while true; do sleep 1; done\n",
}


def start_escapers(lmcd_factory, tmp_path, names, extra=()):
    d = tmp_path / "plugins"
    d.mkdir()
    for n in names:
        write(d / n, ESCAPES[n].format(d=tmp_path))
    srv = lmcd_factory(["--runtime-plugin-locations", str(d), *extra], env=ENV)
    for n in names:
        srv.wait_log(f"[{d / n}] ready")
    want = {"bg_sleep.sh": "bg", "term_ignorer.sh": "ign", "escapee.sh": "esc", "daemon.sh": "dmn"}
    for n in names:
        f = tmp_path / f"{want[n]}.pids"
        wait_for(lambda f=f: f.exists() and f.read_text().strip(), 10, what=f"{f} written")
    # everything below lmcd now, plus what the plugins recorded (the daemon
    # is already orphaned: before the fix it is not below lmcd at all)
    procs = snapshot(descendants(srv.proc.pid) | recorded_pids(tmp_path))
    assert recorded_pids(tmp_path) <= set(procs), "a recorded process is already gone"
    return srv, procs


def assert_all_gone(procs, timeout=10.0):
    deadline = time.monotonic() + timeout
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive(procs)
    for pid in left:  # never leave them behind, even when the test fails
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    assert not left, f"processes outlived lmcd: {left}"


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_kill_9_of_lmcd_leaves_no_plugin_descendant(lmcd_factory, tmp_path, name):
    srv, procs = start_escapers(lmcd_factory, tmp_path, [name])
    srv.proc.kill()
    srv.proc.wait(5)
    assert_all_gone(procs)


def test_kill_9_of_lmcd_stops_the_example_heartbeat_and_its_sleep(lmcd_factory, tmp_path):
    example = os.path.join(ROOT, "examples", "mp_runtime_plugins", "mp_heartbeat.sh")
    srv = lmcd_factory(["--runtime-plugin-locations", example], env=ENV)
    srv.wait_log("[mp_heartbeat] heartbeat #0")
    # its `sleep 30` runs in the background of the plugin
    def comm(p):
        try:
            with open(f"/proc/{p}/comm") as f:
                return f.read().strip()
        except OSError:  # gone meanwhile
            return None
    wait_for(lambda: any(comm(p) == "sleep" for p in descendants(srv.proc.pid)), 10, what="the heartbeat's sleep")
    procs = snapshot(descendants(srv.proc.pid))
    srv.proc.kill()
    srv.proc.wait(5)
    assert_all_gone(procs)


def test_clean_stop_leaves_no_escapee_or_daemon(lmcd_factory, tmp_path):
    srv, procs = start_escapers(lmcd_factory, tmp_path, sorted(ESCAPES), ["--runtime-plugin-stop-timeout", "0.5"])
    assert srv.stop() == 0
    assert_all_gone(procs, timeout=5.0)
