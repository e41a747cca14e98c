"""Metrics end to end: LMCache's families under their exported names and
labels, lmcd's extras, latency histograms, `promtool check metrics` on live
scrapes taken while a bounded load runs, the --prometheus-port listener,
and the switches that turn metrics off."""
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from conftest import free_port, wait_for
from lmcd_client import http_json, http_text
from obs_load import CHUNK, run_load, server_args

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{name: [(labels dict, value)]} and {name: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(3) or ""))
        samples.setdefault(m.group(1), []).append((labels, float(m.group(4))))
    return samples, types


def total(samples, name, **match):
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == x for k, x in match.items()))


def promtool_check(text):
    if not shutil.which("promtool"):
        pytest.skip("promtool not installed (Debian package prometheus; mk/deps.sh installs it)")
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"promtool check metrics failed:\n{r.stdout}{r.stderr}"


def test_metrics_catalogue_and_promtool_under_load(lmcd_factory):
    prom = free_port()
    srv = lmcd_factory(server_args(["--prometheus-port", str(prom)]))
    done = {}
    load = threading.Thread(target=lambda: done.update(run_load(srv.url, rounds=40)))
    load.start()
    scrapes = 0
    try:
        while load.is_alive() and scrapes < 20:  # bounded: at most 20 scrapes during the load
            promtool_check(http_text(srv.http))
            scrapes += 1
    finally:
        load.join(60)
    assert not load.is_alive() and done["lookups"] == 40
    assert scrapes >= 1
    text = http_text(srv.http)
    promtool_check(text)
    s, types = parse(text)

    # LMCache's lookup family: model_name and cache_salt, tokens
    req = s["lmcache_mp_lookup_requested_tokens_total"]
    assert {tuple(sorted(lab)) for lab, _ in req} == {("cache_salt", "model_name")}
    assert total(s, "lmcache_mp_lookup_requested_tokens_total") == done["requested_chunks"] * CHUNK
    assert total(s, "lmcache_mp_lookup_hit_tokens_total") == done["hit_chunks"] * CHUNK
    assert total(s, "lmcache_mp_lookup_hit_l1_tokens_total") == done["hit_chunks"] * CHUNK
    assert total(s, "lmcache_mp_lookup_hit_l2_tokens_total") == 0
    assert total(s, "lmcache_mp_lookups_requests_total") == 40
    assert total(s, "lmcache_mp_lookups_requests_total", model_name="obs/model-b", cache_salt="tenant-1") == 10
    # L1 family: chunks by cache_salt, and per-salt bytes (lmcd)
    assert total(s, "lmcache_mp_l1_write_chunks_total") == done["stored"] == 120
    assert total(s, "lmcache_mp_l1_write_chunks_total", cache_salt="tenant-1") == 60
    assert total(s, "lmcache_mp_l1_read_chunks_total") == 120
    assert total(s, "lmcd_l1_write_bytes_total", cache_salt="") == 60 * 2048
    assert {tuple(lab) for lab, _ in s["lmcache_mp_l1_read_chunks_total"]} == {("cache_salt",)}
    # gauges and counters read at scrape
    st = http_json(srv.http)
    l1 = st["storage_manager"]["l1_manager"]
    assert total(s, "lmcache_mp_l1_memory_usage_bytes") == l1["memory_used_bytes"]
    assert types["lmcache_mp_l1_memory_usage_bytes"] == "gauge"
    assert types["lmcache_mp_l1_evicted_chunks_total"] == "counter"
    assert "lmcache_mp_l1_usage_ratio" in s and "lmcache_mp_active_prefetch_jobs" in s
    assert "lmcache_mp_l1_eviction_loop_ticks_total" in s
    # health family: model_name and the fixed labels LMCache has
    for lab, _ in s["lmcache_mp_l1_allocation_failure_total"]:
        assert lab["during"] == "l1_store" and lab["model_name"].startswith("obs/")
    # no L2 adapter: no L2 sample at all (not even zeros)
    assert not [n for n in s if n.startswith("lmcache_mp_l2_")]
    # lmcd's extras keep their prefix; the bad request was counted
    assert total(s, "lmcd_bad_requests_total", kind="few_frames") == 1
    assert total(s, "lmcd_requests_total", op="lookup") == 40
    assert all(n.startswith(("lmcache_mp_", "lmcd_")) for n in s)

    # latency histograms, per operation: cumulative buckets, +Inf == count == requests
    assert types["lmcd_request_duration_seconds"] == "histogram"
    buckets = [(lab, v) for lab, v in s["lmcd_request_duration_seconds_bucket"] if lab["op"] == "lookup"]
    les = [lab["le"] for lab, _ in buckets]
    assert les[0] == "1e-05" and les[-2] == "10" and les[-1] == "+Inf", les
    values = [v for _, v in buckets]
    assert values == sorted(values), "buckets are cumulative"
    assert values[-1] == total(s, "lmcd_request_duration_seconds_count", op="lookup") == 40
    assert 0 < total(s, "lmcd_request_duration_seconds_sum", op="lookup") < 40 * 10
    lat = st["server"]["latency"]["ops"]["lookup"]
    assert lat["count"] == 40 and 0 < lat["p50_seconds"] <= lat["p99_seconds"] <= 10

    # the same families on --prometheus-port, any path (prometheus_client's server does)
    text2 = http_text(f"http://127.0.0.1:{prom}", "/metrics")
    promtool_check(text2)
    s2, _ = parse(text2)
    assert total(s2, "lmcache_mp_lookup_requested_tokens_total") == done["requested_chunks"] * CHUNK
    assert "lmcd_requests_total" in parse(http_text(f"http://127.0.0.1:{prom}", "/"))[0]
    srv.stop()


def test_metrics_hostile_labels_stay_valid(lmcd_factory):
    """Model names and salts are client bytes: quotes, backslashes, newlines
    and non-ASCII must not break the exposition; endless salts are capped."""
    from lmcd_client import Client, make_key
    srv = lmcd_factory(server_args())
    with Client(srv.url, timeout=10.0) as c:
        names = ['a"b', "back\\slash", "new\nline", "caf\u00e9", "x" * 300]
        for i, name in enumerate(names):
            c.lookup(make_key(name, list(range(CHUNK)), 0, CHUNK, f"h{i}", cache_salt=f'q"t\n{i}'))
        for i in range(150):  # more salts than a thread keeps rows for
            c.lookup(make_key("m", list(range(CHUNK)), 0, CHUNK, f"salt{i}", cache_salt=f"s{i}"))
        wait_for(lambda: http_json(srv.http)["counters"]["lookups"] == len(names) + 150, 10, what="lookups counted")
    text = http_text(srv.http)
    promtool_check(text)
    s, _ = parse(text)
    assert total(s, "lmcache_mp_lookups_requests_total") == len(names) + 150, "nothing lost to the cap"
    salts = {lab["cache_salt"] for lab, _ in s["lmcache_mp_lookups_requests_total"]}
    assert "_other" in salts and len(salts) <= 2 * 64 * 4, "label pairs are bounded"
    models = {lab["model_name"] for lab, _ in s["lmcache_mp_lookups_requests_total"]}
    assert 'a\\"b' in models and "back\\\\slash" in models and "new?line" in models
    assert "caf??" in models and "x" * 128 in models, "non-ASCII bytes as '?', long labels cut"
    assert 'q\\"t?0' in salts, "control bytes as '?'"
    srv.stop()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("flag", ["--disable-metrics", "--disable-observability"])
def test_metrics_disabled(lmcd_factory, flag):
    prom = free_port()
    srv = lmcd_factory(server_args([flag, "--prometheus-port", str(prom)]))
    assert _get(srv.http + "/metrics") == 404
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{prom}/metrics", timeout=2)
    assert _get(srv.http + "/status") == 200, "the JSON API stays"
    assert srv.stop() == 0


def test_prometheus_port_taken_is_not_fatal(lmcd_factory):
    a = lmcd_factory(server_args(["--prometheus-port", str(free_port())]))
    port = re.search(r"Prometheus metrics on http://127.0.0.1:(\d+)/metrics", a.log()).group(1)
    b = lmcd_factory(server_args(["--prometheus-port", port]))
    assert "cannot listen on --prometheus-port" in b.log()
    assert _get(b.http + "/metrics") == 200
    assert b.stop() == 0 and a.stop() == 0


def test_lock_gauges_and_ttl_expiries(lmcd_factory):
    """Read locks a LOOKUP took and nobody released expire after the TTL and
    are counted; the lock gauges follow."""
    from lmcd_client import Client, make_key
    srv = lmcd_factory(server_args(["--l1-read-ttl-seconds", "1"]))
    run_load(srv.url, rounds=2)
    with Client(srv.url, timeout=10.0) as c:
        from obs_load import tokens
        c.lookup(make_key("obs/model-a", tokens(1000, 4), 0, 4 * CHUNK, "held"))  # 3 chunks present, locked
        s, _ = parse(http_text(srv.http))
        assert total(s, "lmcd_l1_read_locked_objects") == 3
        wait_for(lambda: total(parse(http_text(srv.http))[0], "lmcd_l1_expired_read_locks_total") >= 3, 10,
                 what="read locks to expire")
        s, _ = parse(http_text(srv.http))
        assert total(s, "lmcd_l1_read_locked_objects") == 0
        assert http_json(srv.http)["storage_manager"]["l1_manager"]["expired_read_locks"] >= 3
    srv.stop()
