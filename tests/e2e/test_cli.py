"""lmcd-cli against the real lmcd: every command in both profiles, exit codes,
timeouts and usage errors."""
import json
import os
import subprocess
import time

import pytest

from conftest import LMCD_CLI, free_port

PROFILES = ["lmcache-2609", "lmcache-2604"]


def cli(*args, timeout=30):
    """Runs lmcd-cli; returns (exit code, stdout, stderr)."""
    p = subprocess.run([LMCD_CLI, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(params=PROFILES)
def server(request, lmcd_factory):
    s = lmcd_factory(args=["--protocol", request.param, "--l1-size-gb", "0.1"])
    s.profile = request.param
    return s


def zmq_args(s):
    return ["--host", "127.0.0.1", "--port", s.port, "--protocol", s.profile]


def test_cli_get_chunk_size_prints_the_integer(server):
    rc, out, err = cli("get-chunk-size", *zmq_args(server))
    assert (rc, out, err) == (0, "256\n", "")


def test_cli_get_chunk_size_follows_the_server_setting(lmcd_factory):
    s = lmcd_factory(args=["--chunk-size", "64", "--l1-size-gb", "0.1"])
    rc, out, _ = cli("get-chunk-size", "--port", s.port, "--host", "127.0.0.1")
    assert (rc, out) == (0, "64\n")


def test_cli_noop_prints_ok(server):
    rc, out, _ = cli("noop", *zmq_args(server))
    assert (rc, out) == (0, "OK\n")


def test_cli_ping_prints_true(server):
    rc, out, _ = cli("ping", *zmq_args(server))
    assert (rc, out) == (0, "true\n")


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_cli_clear_reports_success(server, force):
    rc, out, _ = cli("clear", *force, *zmq_args(server))
    assert (rc, out) == (0, "Cache cleared successfully.\n")


def test_cli_end_session_succeeds_for_any_id(server):
    rc, out, _ = cli("end-session", "req-123", *zmq_args(server))
    assert rc == 0
    assert "req-123" in out


def test_cli_host_accepts_tcp_urls(server):
    rc, out, _ = cli("get-chunk-size", "--host", "tcp://127.0.0.1", "--port", server.port,
                     "--protocol", server.profile)
    assert (rc, out) == (0, "256\n")
    rc, out, _ = cli("noop", f"--host=tcp://127.0.0.1:{server.port}", f"--protocol={server.profile}")
    assert (rc, out) == (0, "OK\n")


def test_cli_host_accepts_ipc_urls(lmcd_factory, tmp_path):
    url = f"ipc://{tmp_path}/lmcd.sock"
    lmcd_factory(args=["--host", url, "--l1-size-gb", "0.1"])
    rc, out, err = cli("ping", "--host", url, "--timeout", "5")
    assert (rc, out) == (0, "true\n"), err


def test_cli_status_pretty_prints_the_status_json(server):
    rc, out, err = cli("status", "--http-host", "127.0.0.1", "--http-port", server.http_port)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["chunk_size"] == 256
    assert "\n  " in out, "indented"


def test_cli_plugins_is_delegated(server):
    rc, out, err = cli("plugins", "--http-port", server.http_port, "--json")
    assert rc == 0, err
    json.loads(out)


def test_cli_timeout_against_a_dead_port_exits_1_within_the_bound():
    port = free_port()
    t0 = time.monotonic()
    rc, out, err = cli("get-chunk-size", "--host", "127.0.0.1", "--port", port, "--timeout", "0.5")
    took = time.monotonic() - t0
    assert rc == 1
    assert out == ""
    assert f"tcp://127.0.0.1:{port}" in err, "the message names the server"
    assert "0.5 s" in err
    assert 0.45 <= took < 5, took


def test_cli_protocol_mismatch_times_out_cleanly(lmcd_factory):
    s = lmcd_factory(args=["--protocol", "lmcache-2609", "--l1-size-gb", "0.1"])
    # 2604's GET_CHUNK_SIZE (11) is a 2609 lookup-hits request without its id: no reply.
    rc, _, err = cli("get-chunk-size", "--port", s.port, "--host", "127.0.0.1",
                     "--protocol", "lmcache-2604", "--timeout", "0.5")
    assert rc == 1
    assert "lmcache-2604" in err


def test_cli_status_without_a_server_exits_1():
    rc, _, err = cli("status", "--http-port", free_port(), "--timeout", "2")
    assert rc == 1
    assert "status" in err


@pytest.mark.parametrize("args,needle", [
    ([], "missing COMMAND"),
    (["frobnicate"], "unknown command frobnicate"),
    (["--port", "1"], "before the COMMAND"),
    (["ping", "--bogus"], "unknown option --bogus"),
    (["ping", "extra"], "unexpected argument extra"),
    (["end-session"], "missing REQUEST_ID"),
    (["end-session", "a", "b"], "unexpected argument b"),
    (["noop", "--port"], "--port needs a value"),
    (["noop", "--port", "70000"], "port number"),
    (["noop", "--port", "abc"], "port number"),
    (["noop", "--timeout", "0"], "--timeout"),
    (["noop", "--timeout", "soon"], "--timeout"),
    (["noop", "--protocol", "lmcache-2000"], "--protocol"),
    (["noop", "--host", "http://x"], "--host"),
    (["noop", "--force"], "unknown option --force"),
    (["status", "--port", "5555"], "unknown option --port"),
    (["ping", "--http-port", "1"], "unknown option --http-port"),
])
def test_cli_usage_errors_exit_2_with_one_line(args, needle):
    rc, out, err = cli(*args)
    assert rc == 2
    assert out == ""
    assert needle in err
    assert err.count("\n") == 1, err


def test_cli_help_lists_every_command():
    rc, out, _ = cli("--help")
    assert rc == 0
    for name in ["clear", "end-session", "get-chunk-size", "noop", "ping", "status", "plugins"]:
        assert name in out


@pytest.mark.parametrize("cmd", ["clear", "end-session", "get-chunk-size", "noop", "ping", "status"])
def test_cli_command_help_exits_0(cmd):
    rc, out, _ = cli(cmd, "--help")
    assert rc == 0
    assert out.startswith(f"usage: lmcd-cli {cmd}")
    assert "--timeout" in out
