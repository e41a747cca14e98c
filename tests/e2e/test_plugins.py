"""End-to-end tests of runtime plugins: real lmcd, real plugin processes.

Each test writes small plugins into tmp_path; a plugin reports what it saw
(environment, argv, fds, config) by writing a JSON file there. Waits are
bounded polls, never fixed sleeps.
"""
import json
import os
import re
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import LMCD_CLI, ROOT, wait_for

# Debian's interpreters, so "Launched ... with" is predictable and the
# example plugins run under /usr/bin/python3 (the brief's rule for e2e).
SYS_PATH = "/usr/bin:/bin"
ENV = {"PATH": SYS_PATH}


def write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return str(path)


def http(srv, method, target, timeout=5.0):
    """(status, parsed JSON or text) from lmcd's HTTP port."""
    req = urllib.request.Request(srv.http + target, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")


def plugins(srv):
    status, body = http(srv, "GET", "/plugins")
    assert status == 200, body
    return {p["path"]: p for p in body}


def read_json_file(path, timeout=10.0):
    def ready():
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None
    return wait_for(ready, timeout, what=f"plugin report {path}")


def pid_gone(pid):
    """True when pid no longer runs (gone, or a zombie awaiting init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def log_times(log, needle):
    """Monotonic-enough seconds of each log line containing needle."""
    out = []
    for line in log.splitlines():
        if needle in line:
            m = re.search(r"\[\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d),(\d{3})\]", line)
            if m:
                h, mi, s, ms = map(int, m.groups())
                out.append(h * 3600 + mi * 60 + s + ms / 1000.0)
    return out


REPORT_PY = r'''
import json, os, sys
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
status = {}
with open("/proc/self/status") as f:
    for line in f:
        k, _, v = line.partition(":")
        status[k] = v.strip()
names = [k for k in os.environ if "PLUGIN" in k or k == "PYTHONUNBUFFERED"]
cfg_file = os.environ.get("LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE")
st = os.stat(cfg_file) if cfg_file else None
report = {
    "argv": sys.argv, "executable": sys.executable,
    "env": {k: os.environ[k] for k in names},
    "fds": fds, "sigblk": status.get("SigBlk"),
    "sid_is_pid": os.getsid(0) == os.getpid(), "pgid_is_pid": os.getpgid(0) == os.getpid(),
    "cfg_file_mode": (st.st_mode & 0o777) if st else None,
    "cfg_file_text": open(cfg_file).read() if cfg_file else None,
}
tmp = OUT + ".tmp"
with open(tmp, "w") as f:
    json.dump(report, f)
os.rename(tmp, OUT)
print("report written")
'''


def report_plugin(tmp_path, name="report.py"):
    out = str(tmp_path / (name + ".json"))
    path = write(tmp_path / name, f"OUT = {out!r}\n" + REPORT_PY)
    return path, out


def test_plugin_receives_lmcache_environment_and_config_json(lmcd_factory, tmp_path):
    path, out = report_plugin(tmp_path)
    extra = {"plugin.frontend.heartbeat_url": "http://localhost:5000/heartbeat", "n": 1}
    srv = lmcd_factory(["--runtime-plugin-locations", path,
                        "--runtime-plugin-config", json.dumps(extra)], env=ENV)
    srv.wait_log(f"Launched runtime plugin: {path} with /usr/bin/python3")
    rep = read_json_file(out)
    srv.wait_log(f"[{path}] report written")
    assert rep["argv"] == [path]
    assert rep["executable"] == "/usr/bin/python3"
    env = rep["env"]
    for prefix in ("LMCACHE_RUNTIME_PLUGIN_", "LMCACHE_PLUGIN_"):
        assert env[prefix + "ROLE"] == ""
        assert env[prefix + "WORKER_COUNT"] == "1"
        assert env[prefix + "WORKER_ID"] == "0"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "LMCACHE_RUNTIME_PLUGIN_EXTRA_CONFIG" not in env, "LMCache never sets it"
    raw = env["LMCACHE_RUNTIME_PLUGIN_CONFIG"]
    assert env["LMCACHE_PLUGIN_CONFIG"] == raw
    assert rep["cfg_file_text"] == raw
    assert rep["cfg_file_mode"] == 0o600
    cfg = json.loads(raw)
    assert list(cfg)[:4] == ["mp_config", "storage_manager_config", "obs_config", "http_config"]
    assert list(cfg)[-1] == "runtime_plugin_extra_config"
    assert cfg["runtime_plugin_extra_config"] == extra
    assert cfg["mp_config"]["runtime_plugin_config"]["extra_config"] == extra
    assert cfg["http_config"]["http_port"] == srv.http_port
    assert cfg["mp_config"]["port"] == srv.port
    # Python's json.dumps layout: ", " and ": " separators, one line
    assert "\n" not in raw and '"mp_config": {' in raw
    srv.stop()
    assert not os.path.exists(env["LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE"]), "config file removed at stop"


def test_plugin_process_is_isolated_session_with_devnull_stdin(lmcd_factory, tmp_path):
    path, out = report_plugin(tmp_path)
    srv = lmcd_factory(["--runtime-plugin-locations", str(tmp_path)], env=ENV)
    rep = read_json_file(out)
    assert rep["sid_is_pid"] and rep["pgid_is_pid"], "each plugin leads its own session"
    assert rep["fds"]["0"] == "/dev/null"
    assert rep["fds"]["1"].startswith("pipe:") and rep["fds"]["1"] == rep["fds"]["2"]
    extra = {fd: t for fd, t in rep["fds"].items() if int(fd) > 2 and "/fd" not in t}
    assert extra == {}, f"server fds leaked into the plugin: {extra}"
    assert int(rep["sigblk"], 16) == 0, "the server's blocked signals must be unblocked"
    srv.stop()


def test_plugin_output_lines_stderr_order_and_exit_code(lmcd_factory, tmp_path):
    path = write(tmp_path / "talk.sh",
                 "echo '   padded out   '\necho 'to stderr' >&2\necho\necho last\nexit 3\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path], env=ENV)
    srv.wait_log(f"Runtime plugin {path} exited with code 3")
    log = srv.log()
    assert f"Launched runtime plugin: {path} with /usr/bin/bash" in log or \
        f"Launched runtime plugin: {path} with /bin/bash" in log
    lines = [l for l in log.splitlines() if f"[{path}]" in l]
    assert f"[{path}] padded out (" in lines[0], "whitespace stripped as LMCache does"
    assert f"[{path}] to stderr (" in lines[1], "stderr kept, in the order written"
    assert f"[{path}]  (" in lines[2], "an empty line is logged as '[<path>] '"
    assert f"[{path}] last (" in lines[3]
    assert log.index(f"[{path}] last") < log.index(f"Runtime plugin {path} exited with code 3")
    # main publishes the supervisor once start-up returns, which a loaded
    # machine may run after this quick plugin has already exited
    p = wait_for(lambda: plugins(srv).get(path), 10, what="the plugin in GET /plugins")
    assert p["state"] == "exited" and p["last_exit_code"] == 3 and p["pid"] is None
    assert p["output_tail"] == ["padded out", "to stderr", "", "last"]
    srv.stop()


def test_plugin_signal_death_reports_negative_code(lmcd_factory, tmp_path):
    path = write(tmp_path / "segv.sh", "echo dying\nkill -SEGV $$\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path], env=ENV)
    srv.wait_log(f"Runtime plugin {path} exited with code -11")
    srv.stop()


def test_plugin_binary_and_flood_output_never_block_the_server(lmcd_factory, tmp_path):
    flood = write(tmp_path / "flood.py", r'''
import os, sys
out = sys.stdout.buffer
out.write(b"bin:\xff\xfe\x00\x1b[31m ok\n")
out.write(b"L" * 10000 + b"\n")
out.write(b"no newline at all " * 2000)
out.flush()
i = 0
while True:
    out.write(b"flood line %d\n" % i)
    i += 1
''')
    srv = lmcd_factory(["--runtime-plugin-locations", flood], env=ENV)
    srv.wait_log(f"[{flood}] bin:\\xff\\xfe\\x00\\x1b[31m ok")
    srv.wait_log(f"[{flood}] (continued) L")
    srv.wait_log("flood line 5000")
    # the server answers promptly while the plugin floods
    for _ in range(20):
        t0 = time.monotonic()
        status, body = http(srv, "GET", "/healthcheck", timeout=2.0)
        assert status == 200, body
        assert time.monotonic() - t0 < 1.0
    p = plugins(srv)[flood]
    assert p["state"] == "running"
    assert len(p["output_tail"]) == 20
    longest = max(len(l.encode()) for l in srv.log().splitlines())
    assert longest < 4096 + 600, "lines are cut at 4096 bytes"
    assert srv.stop() == 0


def test_plugin_ignoring_sigterm_is_killed_after_the_stop_timeout(lmcd_factory, tmp_path):
    pidfile = tmp_path / "stubborn.pid"
    path = write(tmp_path / "stubborn.sh",
                 f"trap '' TERM\necho $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}\n"
                 "echo ready\nwhile true; do sleep 0.2; done\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path,
                        "--runtime-plugin-stop-timeout", "0.5"], env=ENV)
    srv.wait_log(f"[{path}] ready")
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 5))
    t0 = time.monotonic()
    assert srv.stop() == 0
    elapsed = time.monotonic() - t0
    log = srv.log()
    assert f"Runtime plugin {path} (pid {pid}) did not stop within 500 ms of SIGTERM; sending SIGKILL" in log
    assert f"Runtime plugin {path} exited with code -9" in log
    assert 0.4 < elapsed < 5.0
    assert pid_gone(pid)


def test_plugin_grandchildren_are_gone_after_stop(lmcd_factory, tmp_path):
    gpid = tmp_path / "grandchild.pid"
    path = write(tmp_path / "parent.sh",
                 f"sleep 1000 &\necho $! > {gpid}.tmp && mv {gpid}.tmp {gpid}\n"
                 "trap 'exit 0' TERM\necho ready\nwait\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path], env=ENV)
    srv.wait_log(f"[{path}] ready")
    child = int(wait_for(lambda: gpid.exists() and gpid.read_text().strip(), 5))
    assert not pid_gone(child)
    assert srv.stop() == 0
    wait_for(lambda: pid_gone(child), 5, what="grandchild gone")


def test_plugin_grandchild_left_behind_by_exited_plugin_is_stopped(lmcd_factory, tmp_path):
    gpid = tmp_path / "orphan.pid"
    path = write(tmp_path / "leaver.sh",
                 f"sleep 1000 &\necho $! > {gpid}.tmp && mv {gpid}.tmp {gpid}\nexit 0\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path], env=ENV)
    srv.wait_log(f"Runtime plugin {path} exited with code 0")
    child = int(wait_for(lambda: gpid.exists() and gpid.read_text().strip(), 5))
    wait_for(lambda: pid_gone(child), 5, what="the exited plugin's group stopped")
    srv.stop()


def test_plugins_die_when_the_server_is_killed(lmcd_factory, tmp_path):
    pidfile = tmp_path / "p.pid"
    path = write(tmp_path / "quiet.py",
                 f"import os, time\nopen({str(pidfile)!r} + '.tmp', 'w').write(str(os.getpid()))\n"
                 f"os.rename({str(pidfile)!r} + '.tmp', {str(pidfile)!r})\n"
                 "while True:\n    time.sleep(1)\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path], env=ENV)
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10))
    srv.proc.kill()
    srv.proc.wait(5)
    wait_for(lambda: pid_gone(pid), 5, what="plugin killed by PR_SET_PDEATHSIG")


def test_plugin_restart_on_failure_backs_off_then_fails(lmcd_factory, tmp_path):
    path = write(tmp_path / "crash.sh", "echo crashing\nexit 7\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path,
                        "--runtime-plugin-restart", "on-failure",
                        "--runtime-plugin-max-restarts", "2"], env=ENV)
    srv.wait_log("restarted 2 times within 600 s", timeout=15)
    log = srv.log()
    launches = log_times(log, f"Launched runtime plugin: {path}")
    assert len(launches) == 3, log
    gaps = [b - a for a, b in zip(launches, launches[1:])]
    assert 0.9 < gaps[0] < 2.5, gaps
    assert 1.9 < gaps[1] < 3.5, gaps
    assert "Restarting runtime plugin %s in 1.0 s" % path in log
    assert "Restarting runtime plugin %s in 2.0 s" % path in log
    assert re.search(r"ERROR: Runtime plugin .*crash\.sh restarted 2 times", log)
    p = plugins(srv)[path]
    assert p["state"] == "failed" and p["restarts"] == 2 and p["last_exit_code"] == 7
    assert "restart limit" in p["reason"]
    # a manual restart clears the failed state
    assert http(srv, "POST", "/plugins/restart?path=" + path)[0] == 200
    wait_for(lambda: len(log_times(srv.log(), f"Launched runtime plugin: {path}")) == 4, 5)
    srv.stop()


def test_plugin_clean_exit_is_not_restarted_on_failure(lmcd_factory, tmp_path):
    ok = write(tmp_path / "ok.sh", "echo done\nexit 0\n")
    srv = lmcd_factory(["--runtime-plugin-locations", ok, "--runtime-plugin-restart", "on-failure"], env=ENV)
    srv.wait_log(f"Runtime plugin {ok} exited with code 0")
    p = wait_for(lambda: plugins(srv)[ok]["state"] == "exited" and plugins(srv)[ok], 5)
    assert p["restarts"] == 0 and "Restarting runtime plugin" not in srv.log()
    srv.stop()


def test_missing_location_and_plugin_without_interpreter(lmcd_factory, tmp_path):
    missing = str(tmp_path / "nowhere")
    txt = write(tmp_path / "notes.txt", "no shebang here\n")
    good = write(tmp_path / "good.sh", "echo fine\nsleep 100\n")
    srv = lmcd_factory(["--runtime-plugin-locations", missing, txt, good], env=ENV)
    srv.wait_log(f"[{good}] fine")
    log = srv.log()
    assert f"WARNING: Runtime plugin location {missing} does not exist" in log
    assert f"ERROR: Failed to launch plugin {txt}: " in log
    ps = plugins(srv)
    assert list(ps) == [txt, good], "location order is kept"
    assert ps[txt]["state"] == "skipped" and ".txt" in ps[txt]["reason"]
    assert ps[good]["state"] == "running" and ps[good]["pid"] > 0
    srv.stop()


def test_discovery_order_dedup_and_dotfiles(lmcd_factory, tmp_path):
    d = tmp_path / "plugins"
    (d / "sub").mkdir(parents=True)
    for name in ("b.sh", "a.sh", "z.py", "sub/m.py", ".hidden.py"):
        write(d / name, "echo hi\n" if name.endswith(".sh") else "print('hi')\n")
    srv = lmcd_factory(["--runtime-plugin-locations", str(d) + "/", str(d / "a.sh")], env=ENV)
    srv.wait_log(f"Runtime plugin {d}/a.sh is the same file as {d}/a.sh; launching it once")
    srv.wait_log(f"Launched runtime plugin: {d}/b.sh")
    log = srv.log()
    order = re.findall(r"Launched runtime plugin: (\S+) with", log)
    assert order == [f"{d}/sub/m.py", f"{d}/z.py", f"{d}/a.sh", f"{d}/b.sh"]
    srv.stop()


def test_shebang_env_and_argument_are_honoured(lmcd_factory, tmp_path):
    envpy = write(tmp_path / "envy.py", "#!/usr/bin/env python3\nimport sys\nprint('argv', sys.argv[1:])\n")
    tool = write(tmp_path / "tool.run", "#!/bin/bash -eu\r\necho \"flags $-\"\n")
    srv = lmcd_factory(["--runtime-plugin-locations", envpy, tool], env=ENV)
    srv.wait_log(f"Launched runtime plugin: {envpy} with /usr/bin/python3")
    srv.wait_log(f"Launched runtime plugin: {tool} with /bin/bash")
    srv.wait_log(f"[{tool}] flags ")
    flags = re.search(re.escape(f"[{tool}] flags ") + r"(\S+)", srv.log()).group(1)
    assert "e" in flags and "u" in flags, flags
    argv = {p["path"]: p["argv"] for p in plugins(srv).values()}
    assert argv[tool] == ["/bin/bash", "-eu", tool]
    assert argv[envpy] == ["/usr/bin/python3", envpy]
    srv.stop()


def test_large_config_travels_in_the_file_only(lmcd_factory, tmp_path):
    path, out = report_plugin(tmp_path)
    extra = {"blob": "x" * 110000}
    srv = lmcd_factory(["--runtime-plugin-locations", path,
                        "--runtime-plugin-config", json.dumps(extra)], env=ENV)
    rep = read_json_file(out)
    assert "LMCACHE_RUNTIME_PLUGIN_CONFIG" not in rep["env"]
    assert "LMCACHE_PLUGIN_CONFIG" not in rep["env"]
    assert json.loads(rep["cfg_file_text"])["runtime_plugin_extra_config"] == extra
    assert "LMCACHE_RUNTIME_PLUGIN_CONFIG and LMCACHE_PLUGIN_CONFIG are left out" in srv.log()
    srv.stop()


def test_get_plugins_and_restart_over_http(lmcd_factory, tmp_path):
    path = write(tmp_path / "svc.sh", "trap 'echo bye; exit 0' TERM\necho up\nwhile true; do sleep 0.2; done\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path], env=ENV)
    srv.wait_log(f"[{path}] up")
    p = plugins(srv)[path]
    assert p["state"] == "running" and p["restarts"] == 0 and p["uptime_s"] >= 0
    assert p["interpreter"] and p["argv"][-1] == path
    status, body = http(srv, "GET", "/api/plugins")
    assert status == 200 and [q["path"] for q in body] == [path]
    status, body = http(srv, "POST", "/plugins/restart?path=" + urllib.request.quote(path))
    assert status == 200, body
    srv.wait_log(f"[{path}] bye")
    q = wait_for(lambda: (lambda x: x["state"] == "running" and x["pid"] != p["pid"] and x)(plugins(srv)[path]), 5)
    assert q["restarts"] == 1 and q["last_exit_code"] == 0
    status, body = http(srv, "POST", "/plugins/restart?path=/no/such/plugin.py")
    assert status == 404, body
    srv.stop()


def test_example_plugins_print_their_lines(lmcd_factory, tmp_path):
    loc = "examples/mp_runtime_plugins/"
    srv = lmcd_factory(["--l1-size-gb", "1", "--eviction-policy", "LRU",
                        "--runtime-plugin-locations", loc], env=ENV, cwd=ROOT)
    ex = "examples/mp_runtime_plugins"
    srv.wait_log(f"Launched runtime plugin: {ex}/mp_plugin.py with /usr/bin/python3")
    srv.wait_log(f"[{ex}/mp_plugin.py] [mp_plugin] Started")
    srv.wait_log(f"[{ex}/mp_plugin.py] [mp_plugin] MP server: host=127.0.0.1  port={srv.port}  chunk_size=256")
    srv.wait_log(f"[{ex}/mp_plugin.py] [mp_plugin] Storage: L1=1.0GB  eviction=LRU  watermark=0.8")
    srv.wait_log(f"[{ex}/mp_plugin.py] [mp_plugin] heartbeat #0")
    srv.wait_log(f"[{ex}/mp_heartbeat.sh] [mp_heartbeat] MP server: host=127.0.0.1  port={srv.port}  "
                 "chunk_size=256  eviction=LRU")
    srv.wait_log(f"[{ex}/mp_heartbeat.sh] [mp_heartbeat] heartbeat #0")
    srv.wait_log(f"[{ex}/mp_http_status.py] [mp_http_status] healthcheck: HTTP 200")
    srv.wait_log(f"[{ex}/mp_http_status.py] [mp_http_status] status: HTTP 200")
    assert srv.stop() == 0
    log = srv.log()
    for name, tag in (("mp_plugin.py", "mp_plugin"), ("mp_heartbeat.sh", "mp_heartbeat"),
                      ("mp_http_status.py", "mp_http_status")):
        assert f"[{ex}/{name}] [{tag}] Received termination signal, exiting..." in log
        assert f"Runtime plugin {ex}/{name} exited with code 0" in log


@pytest.mark.skipif(not os.path.exists(LMCD_CLI), reason="lmcd-cli not built")
def test_cli_plugins_lists_and_restarts(lmcd_factory, tmp_path):
    path = write(tmp_path / "cli.sh", "echo up\nwhile true; do sleep 0.2; done\n")
    srv = lmcd_factory(["--runtime-plugin-locations", path], env=ENV)
    srv.wait_log(f"[{path}] up")
    port = ["--http-host", "127.0.0.1", "--http-port", str(srv.http_port)]
    r = subprocess.run([LMCD_CLI, "plugins"] + port, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["STATE", "PID", "RESTARTS", "EXIT", "UPTIME", "PATH"]
    assert "running" in r.stdout and path in r.stdout
    r = subprocess.run([LMCD_CLI, "plugins", "--json"] + port, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["path"] == path
    r = subprocess.run([LMCD_CLI, "plugins", "restart", path] + port, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: plugins(srv)[path]["restarts"] == 1, 10)
    r = subprocess.run([LMCD_CLI, "plugins", "restart", "/nope.sh"] + port, capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "no runtime plugin" in r.stderr
    srv.stop()
    r = subprocess.run([LMCD_CLI, "plugins"] + port, capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "cannot" in r.stderr
