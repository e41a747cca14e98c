"""Runtime plugin launches overlap (docs/runtime_plugins.md, "Launch").

The supervisor starts every plugin without waiting for the one before it:
each guard's report (the plugin's pid, or its exec's errno) is read from the
supervisor's epoll loop, and the guards are cloned by one zygote process.
These tests check that nothing the sequential launch guaranteed was lost:
every exec failure is reported once and exactly, the others run, the log
keeps discovery order, a lost zygote costs speed only, and nothing is left
behind. Real lmcd, real plugin processes; every wait is a bounded poll.
"""
import os
import re
import signal

import pytest

from conftest import wait_for
from test_plugin_lifecycle import assert_all_gone, descendants, snapshot
from test_plugins import ENV, http, plugins, write


def children(pid, zombies=False):
    """{child pid: comm} of pid (only its zombies with zombies=True)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        rest = st.rsplit(")", 1)[1].split()
        if int(rest[1]) == pid and (rest[0] == "Z") == zombies:
            out[int(d)] = st[st.index("(") + 1:st.rindex(")")]
    return out


def make_plugins(d, n, bad_every):
    """n plugins in d, named in discovery order; every bad_every-th one names
    an interpreter the kernel cannot run (ENOEXEC). Returns (good, bad) paths."""
    bad_interp = write(d / "not-an-interpreter", "this is neither ELF nor a script\n", 0o755)
    good, bad = [], []
    for i in range(n):
        p = d / f"p{i:03d}.sh"
        if i % bad_every == bad_every - 1:
            bad.append(write(p, f"#!{bad_interp}\n"))
        else:
            good.append(write(p, "echo started\nexec sleep 100\n"))
    return good, bad


def test_many_plugins_some_failing_exec_each_failure_reported_rest_run(lmcd_factory, tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    good, bad = make_plugins(d, 40, 4)
    srv = lmcd_factory(["--runtime-plugin-locations", str(d), "--runtime-plugin-stop-timeout", "1"], env=ENV)
    for p in good:
        srv.wait_log(f"[{p}] started")
    for p in bad:
        srv.wait_log(f"Failed to launch plugin {p}:")
    log = srv.log()
    for p in bad:
        lines = [l for l in log.splitlines() if f"Failed to launch plugin {p}:" in l]
        assert len(lines) == 1, (p, lines)
        assert f"ERROR: Failed to launch plugin {p}: Exec format error (" in lines[0], lines
    # the launch lines keep discovery order, though the launches overlapped
    launched = re.findall(r"Launched runtime plugin: (\S+) with", log)
    assert launched == good, launched
    ps = plugins(srv)
    assert list(ps) == sorted(good + bad), "GET /plugins keeps discovery order"
    for p in bad:
        assert ps[p]["state"] == "failed" and ps[p]["pid"] is None, ps[p]
        assert ps[p]["reason"] == "launch failed: Exec format error", ps[p]
    for p in good:
        assert ps[p]["state"] == "running" and ps[p]["pid"] > 0, ps[p]
    pids = {ps[p]["pid"] for p in good}
    assert len(pids) == len(good)
    # every launch is over: its zygote helper and the guards of failed launches are reaped
    assert not children(srv.proc.pid, zombies=True)
    kids = children(srv.proc.pid)
    assert list(kids.values()).count("lmcd-guard") == len(good), kids
    procs = snapshot(descendants(srv.proc.pid))
    assert pids <= set(procs)
    assert srv.stop() == 0
    assert_all_gone(procs, timeout=5.0)


def test_failed_launches_are_restarted_by_policy_while_others_run(lmcd_factory, tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    good, bad = make_plugins(d, 8, 2)
    srv = lmcd_factory(["--runtime-plugin-locations", str(d), "--runtime-plugin-restart", "on-failure",
                        "--runtime-plugin-max-restarts", "1"], env=ENV)
    for p in bad:
        srv.wait_log(f"Runtime plugin {p} restarted 1 times within 600 s", timeout=15)
    log = srv.log()
    for p in bad:
        assert log.count(f"Failed to launch plugin {p}: Exec format error") == 2, p
    ps = plugins(srv)
    for p in bad:
        assert ps[p]["state"] == "failed" and ps[p]["restarts"] == 1, ps[p]
    for p in good:
        assert ps[p]["state"] == "running" and ps[p]["restarts"] == 0, ps[p]
    assert srv.stop() == 0


def test_lost_zygote_costs_speed_only(lmcd_factory, tmp_path):
    if os.environ.get("SAN"):
        pytest.skip("sanitizer builds exec every guard: there is no zygote")
    path = write(tmp_path / "up.sh", "echo up $$\nexec sleep 100\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path], env=ENV)
    srv.wait_log(f"[{path}] up")
    zyg = [p for p, comm in children(srv.proc.pid).items() if comm == "lmcd-zygote"]
    assert len(zyg) == 1, children(srv.proc.pid)
    first = plugins(srv)[path]["pid"]
    os.kill(zyg[0], signal.SIGKILL)
    # the next launch finds it gone, says so, and execs a guard instead
    assert http(srv, "POST", "/plugins/restart?path=" + path)[0] == 200
    wait_for(lambda: srv.log().count(f"Launched runtime plugin: {path}") == 2, 10, what="relaunch")
    srv.wait_log(f"Runtime plugin zygote (pid {zyg[0]}) is gone")
    p = wait_for(lambda: (lambda q: q["state"] == "running" and q["pid"] != first and q)(plugins(srv)[path]), 10)
    assert p["restarts"] == 1
    assert not [c for c, comm in children(srv.proc.pid).items() if comm == "lmcd-zygote"]
    procs = snapshot(descendants(srv.proc.pid))
    assert p["pid"] in procs
    assert srv.stop() == 0
    assert_all_gone(procs, timeout=5.0)


def test_kill_9_of_lmcd_takes_the_zygote_and_every_guard(lmcd_factory, tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    good, _ = make_plugins(d, 12, 100)
    srv = lmcd_factory(["--runtime-plugin-locations", str(d)], env=ENV)
    for p in good:
        srv.wait_log(f"[{p}] started")
    procs = snapshot(descendants(srv.proc.pid))
    kids = children(srv.proc.pid)
    comms = sorted(set(kids.values()))
    assert comms in (["lmcd-guard"], ["lmcd-guard", "lmcd-zygote"]), comms
    assert list(kids.values()).count("lmcd-guard") == len(good)
    srv.proc.kill()
    srv.proc.wait(5)
    assert_all_gone(procs)
