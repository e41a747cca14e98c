"""The L2 tier against the real lmcd: fs and mock adapters.

Chunks are stored through the engine-driven (shared-memory) path, written
behind to L2 by the StoreController, dropped from L1 (CLEAR or a small L1
filling up), then found again by LOOKUP, loaded back by the
PrefetchController and retrieved bit for bit. The fs tier also survives a
restart, reads a directory laid out in LMCache's formats (new and older
3-field names, crc32 trailer; built here from the file-name rules, see
docs/l2.md), never serves a corrupt or truncated file, and evicts past its
capacity.
"""
import json
import os
import shutil
import subprocess
import urllib.request
import zlib

import pytest

from conftest import LMCD_CLI, wait_for
from lmcd_client import Client, Segment, ed_payload, http_json, make_key

CHUNK = 256
LAYERS, HIDDEN = 2, 16
SLOT_BYTES = 2 * LAYERS * CHUNK * HIDDEN * 2  # bfloat16, as test_protocol_engine
TRAILER_MAGIC = b"LCRC"


def fs_adapter(path, **extra):
    return json.dumps(dict({"type": "fs", "base_path": str(path)}, **extra))


def l2_status(s):
    return http_json(s.http)["storage_manager"]


def adapter(s, i=0):
    return l2_status(s)["l2_adapters"][i]


def l1_objects(s):
    return l2_status(s)["l1_manager"]["total_object_count"]


def clear_l1(s):
    req = urllib.request.Request(s.http + "/clear-cache", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
    wait_for(lambda: l1_objects(s) == 0, what="L1 empty")


class Worker:
    """One engine-driven worker: registration, segment, store/retrieve."""

    def __init__(self, srv, iid=7):
        self.c = Client(srv.url, timeout=10.0)
        self.sched = Client(srv.url, timeout=10.0)
        self.iid = iid
        reg = self.c.register_ed(ed_payload(iid, num_layers=LAYERS, hidden_dim_size=HIDDEN))
        assert reg["shm_name"] and reg.get("error") is None
        self.seg = Segment(reg["shm_name"])

    def store(self, toks, n_chunks, rid="w"):
        key = make_key("m", toks, 0, n_chunks * CHUNK, rid, worker_id=0)
        ctx = self.c.prepare_store(key, self.iid)["context"]
        data = {}
        for idx, slot in zip(ctx["chunk_indices"], ctx["slots"]):
            assert slot["length"] == SLOT_BYTES
            data[idx] = os.urandom(slot["length"])
            self.seg.write(slot["offset"], data[idx])
        assert self.c.commit_store(key, self.iid) is True
        return data

    def lookup(self, toks, n_chunks, rid):
        self.sched.lookup(make_key("m", toks, 0, n_chunks * CHUNK, rid))
        return self.sched.poll_prefetch_status(rid, timeout=20.0)

    def retrieve(self, toks, n_chunks, rid):
        key = make_key("m", toks, 0, n_chunks * CHUNK, rid, worker_id=0)
        r = self.c.prepare_retrieve(key, self.iid)
        assert r["success"] is True, r
        out = [self.seg.read(s["offset"], s["length"]) for s in r["context"]["slots"]]
        assert self.c.commit_retrieve(key, self.iid) is True
        return out

    def close(self):
        self.seg.close()
        self.c.close()
        self.sched.close()


def tokens(seed, n_chunks):
    return [(seed * 7919 + i) % 50000 for i in range(n_chunks * CHUNK)]


def wait_l2_objects(s, n, i=0):
    wait_for(lambda: adapter(s, i)["objects"] >= n, timeout=20.0,
             what=f"{n} objects written behind to L2\n{json.dumps(l2_status(s).get('store_controller'))}")


def data_files(d):
    return sorted(f for f in os.listdir(d) if f.endswith(".data"))


def hit_all(srv, toks, written, rid):
    """A fresh worker on srv finds every chunk of toks and reads back `written`."""
    n = len(written)
    w = Worker(srv)
    try:
        assert w.lookup(toks, n, rid) == n, srv.log()
        assert w.retrieve(toks, n, rid) == [written[i] for i in range(n)]
    finally:
        w.close()


def round_trip(srv, n=4, seed=1):
    w = Worker(srv)
    try:
        toks = tokens(seed, n)
        written = w.store(toks, n)
        wait_l2_objects(srv, n)
        clear_l1(srv)
        assert w.lookup(toks, n, "after-clear") == n, srv.log()
        got = w.retrieve(toks, n, "after-clear")
        assert got == [written[i] for i in range(n)], "bytes differ after the L2 round trip"
        return toks, written
    finally:
        w.close()


def test_l2_fs_round_trip_and_restart(lmcd_factory, tmp_path):
    d = tmp_path / "l2"
    args = ["--l1-size-gb", "0.05", "--l2-adapter", fs_adapter(d)]
    srv = lmcd_factory(args)
    toks, written = round_trip(srv)
    names = data_files(d)
    assert len(names) == 4 and all(n.startswith("m@0x01000100@0@") for n in names), names
    st = l2_status(srv)
    assert st["num_l2_adapters"] == 1
    assert st["prefetch_controller"]["loaded_chunks"] >= 4
    assert adapter(srv)["lookup"]["hits"] >= 4 and adapter(srv)["load"]["ok"] >= 4
    assert "serves L1 only" not in srv.log()
    metrics = urllib.request.urlopen(srv.http + "/metrics", timeout=5).read().decode()
    assert 'lmcd_l2_objects{adapter="fs0",type="fs"} 4' in metrics, metrics
    assert srv.stop() == 0

    # a new lmcd on the same directory: hits survive the restart
    srv2 = lmcd_factory(args)
    assert "recovered 4 objects" in srv2.log()
    hit_all(srv2, toks, written, "after-restart")
    # lmcd-cli l2 keys lists what the tier holds, as LMCache key strings
    out = subprocess.run([LMCD_CLI, "l2", "keys", "m", "--http-port", str(srv2.http_port),
                          "--page-size", "3"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0, out.stderr
    keys = [line for line in out.stdout.splitlines() if line.startswith("m@")]
    assert len(keys) == 4 and all(k.startswith("m@01000100@0@") for k in keys), out.stdout


def test_l2_mock_round_trip(lmcd_factory):
    srv = lmcd_factory(["--l1-size-gb", "0.05", "--l2-adapter",
                        json.dumps({"type": "mock", "max_size_gb": 0.01, "mock_bandwidth_gb": 10})])
    round_trip(srv, n=3, seed=2)
    assert adapter(srv)["type"] == "mock"


def test_l2_small_l1_evicts_and_l2_serves(lmcd_factory, tmp_path):
    """A small L1 fills up and evicts; the first chunks come back from disk."""
    d = tmp_path / "l2"
    srv = lmcd_factory(["--l1-size-gb", str(48 * (SLOT_BYTES + 4096) / 2**30), "--l2-adapter", fs_adapter(d)])
    w = Worker(srv)
    try:
        batches = []
        for b in range(40):  # bounded: stops once L1 has evicted
            toks = tokens(100 + b, 4)
            batches.append((toks, w.store(toks, 4, rid=f"s{b}")))
            wait_l2_objects(srv, 4 * (b + 1))
            if l2_status(srv)["l1_manager"]["evicted_count"] >= 8:
                break
        assert l2_status(srv)["l1_manager"]["evicted_count"] >= 8, "L1 never evicted"
        toks, written = batches[0]
        assert w.lookup(toks, 4, "old") == 4
        assert w.retrieve(toks, 4, "old") == [written[i] for i in range(4)]
        assert l2_status(srv)["prefetch_controller"]["loaded_chunks"] >= 1
    finally:
        w.close()


def lmcache_names(name):
    """(new-style name, old 3-field name) for one of lmcd's file names."""
    stem = name[:-len(".data")]
    model, rank, group, h = stem.split("@")
    assert rank.startswith("0x") and len(rank) == 10 and len(h) == 64 and group == "0"
    return f"{model}@{rank}@{group}@{h}.data", f"{model}@{rank}@{h}.data"


def test_l2_fs_reads_lmcache_directory_with_crc32(lmcd_factory, tmp_path):
    src = tmp_path / "written-by-lmcd"
    srv = lmcd_factory(["--l1-size-gb", "0.05", "--l2-adapter", fs_adapter(src)])
    w = Worker(srv)
    try:
        toks = tokens(3, 4)
        written = w.store(toks, 4)
        wait_l2_objects(srv, 4)
    finally:
        w.close()
    assert srv.stop() == 0
    # chunk order: LOOKUP on lmcd 1 is not needed, the names carry the hashes;
    # match bytes to names through the payloads
    by_payload = {open(src / n, "rb").read(): n for n in data_files(src)}
    order = [by_payload[written[i]] for i in range(4)]
    # the directory LMCache would have: chunks 0, 2 under new names, 1, 3 under
    # older 3-field names, each payload + "LCRC" + CRC-32 (little-endian)
    d = tmp_path / "lmcache-dir"
    d.mkdir()
    for i, n in enumerate(order):
        new, old = lmcache_names(n)
        body = written[i] + TRAILER_MAGIC + zlib.crc32(written[i]).to_bytes(4, "little")
        (d / (new if i % 2 == 0 else old)).write_bytes(body)
    (d / "README.txt").write_text("not an object")  # ignored
    srv2 = lmcd_factory(["--l1-size-gb", "0.05", "--l2-adapter", fs_adapter(d, checksum="crc32")])
    assert "recovered 4 objects (2 with older 3-field names" in srv2.log()
    hit_all(srv2, toks, written, "lmcache-dir")
    assert srv2.stop() == 0

    # corrupt chunk 2 (one flipped byte) and truncate chunk 3: a miss from chunk 2
    # on, both files deleted, chunks 0-1 still served bit for bit
    c2 = d / lmcache_names(order[2])[0]
    c3 = d / lmcache_names(order[3])[1]
    b = bytearray(c2.read_bytes())
    b[1000] ^= 0x40
    c2.write_bytes(bytes(b))
    c3.write_bytes(c3.read_bytes()[:SLOT_BYTES // 2])
    srv3 = lmcd_factory(["--l1-size-gb", "0.05", "--l2-adapter", fs_adapter(d, checksum="crc32")])
    w = Worker(srv3)
    try:
        assert w.lookup(toks, 4, "corrupt") == 2, srv3.log()
        assert w.retrieve(toks, 2, "corrupt") == [written[0], written[1]]
    finally:
        w.close()
    assert not c2.exists(), "a file failing its checksum is deleted"
    fs = adapter(srv3)["backend"]
    assert fs["checksum_failures"] >= 1 and fs["deleted_corrupt_files"] >= 1
    assert "treated as a miss, file deleted" in srv3.log()


def test_l2_fs_capacity_eviction(lmcd_factory, tmp_path):
    """A tier of 8 objects' capacity, LRU at 0.8: storing 12 keeps it under capacity."""
    d = tmp_path / "l2"
    cap_gb = 8 * SLOT_BYTES / 2**30
    srv = lmcd_factory(["--l1-size-gb", "0.05", "--l2-adapter",
                        fs_adapter(d, max_capacity_gb=cap_gb,
                                   eviction={"eviction_policy": "LRU", "trigger_watermark": 0.8,
                                             "eviction_ratio": 0.5})])
    w = Worker(srv)
    try:
        for b in range(3):
            w.store(tokens(200 + b, 4), 4, rid=f"c{b}")
            wait_for(lambda: l2_status(srv)["store_controller"]["pending_keys_count"] == 0
                     and l2_status(srv)["store_controller"]["in_flight_task_count"] == 0, timeout=20.0)
            # the controller runs once a second: let it bring usage under the watermark
            wait_for(lambda: adapter(srv)["usage_fraction"] < 0.8, timeout=10.0, what="eviction")
    finally:
        w.close()
    ev = l2_status(srv)["l2_eviction_controller"]["adapters"][0]
    assert ev["evicted_keys"] > 0 and ev["eviction_policy"] == "LRU"
    assert len(data_files(d)) <= 8
    assert adapter(srv)["total_bytes_used"] == len(data_files(d)) * SLOT_BYTES
    assert "triggering eviction" in srv.log()


def delete_objects(srv, keys, tier):
    body = json.dumps({"keys": keys, "tier": tier}).encode()
    req = urllib.request.Request(srv.http + "/cache/objects", data=body, method="DELETE",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_l2_delete_objects_by_tier(lmcd_factory, tmp_path):
    d = tmp_path / "l2"
    srv = lmcd_factory(["--l1-size-gb", "0.05", "--l2-adapter", fs_adapter(d)])
    w = Worker(srv)
    try:
        toks = tokens(9, 2)
        w.store(toks, 2)
        wait_l2_objects(srv, 2)
        keys = http_json(srv.http, "/l2/keys?model_name=m")["keys"]
        assert len(keys) == 2
        res = delete_objects(srv, keys[:1], "l2")
        assert res["l2_deleted"] == 1 and res["l1_deleted"] == 0, res
        assert len(data_files(d)) == 1
        res = delete_objects(srv, keys, "all")
        assert res["l1_deleted"] == 2 and res["l2_deleted"] == 1, res
        assert data_files(d) == []
        assert w.lookup(toks, 2, "gone") == 0
    finally:
        w.close()


@pytest.mark.parametrize("bad", ['{"type":"fs"}', '{"type":"fs","base_path":"/tmp/x","checksum":"md5"}'])
def test_l2_bad_adapter_json_refused_at_start(lmcd_factory, bad):
    srv = lmcd_factory(["--l2-adapter", bad], ready=False)
    wait_for(lambda: srv.proc.poll() is not None, timeout=10.0, what="lmcd exits")
    assert srv.proc.returncode != 0
    assert "--l2-adapter #0" in srv.log()


def test_l2_slow_tier_answers_at_the_deadline(lmcd_factory):
    """A mock tier at 0.5 MiB/s a thread and a 0.2 s deadline: LOOKUP is answered with the
    prefix loaded by then, the late loads finish into buffers that were kept,
    and a later LOOKUP gets everything."""
    srv = lmcd_factory(["--l1-size-gb", "0.05", "--l2-prefetch-load-timeout", "0.2", "--l2-adapter",
                        json.dumps({"type": "mock", "max_size_gb": 0.01, "mock_bandwidth_gb": 0.0005})])
    w = Worker(srv)
    try:
        n = 32  # 32 x 32 KiB at 0.5 MiB/s over 4 threads: ~0.5 s to store, as long to load
        toks = tokens(11, n)
        written = w.store(toks, n)
        wait_l2_objects(srv, n)
        clear_l1(srv)
        w.sched.lookup(make_key("m", toks, 0, n * CHUNK, "slow"))
        hits = wait_for(lambda: w.sched.query_prefetch_lookup_hits("slow") is not None
                        and [w.sched.query_prefetch_lookup_hits("slow")], timeout=10.0, what="lookup hits")[0]
        assert hits == n, "LOOKUP_HITS counts what the tier found"
        got = w.sched.poll_prefetch_status("slow", timeout=10.0)
        assert got < n, "QUERY_PREFETCH_STATUS counts what loaded before the deadline"
        pf = l2_status(srv)["prefetch_controller"]
        assert pf["deadline_expired"] >= 1
        # the late loads complete and their reservations are released
        wait_for(lambda: l2_status(srv)["l1_manager"]["write_locked_count"] == 0, timeout=20.0,
                 what="late loads released")
        w.sched.end_session("slow")
        got2 = w.lookup(toks, n, "slow-2")
        assert got2 >= got
        if got2:
            assert w.retrieve(toks, got2, "slow-2") == [written[i] for i in range(got2)]
    finally:
        w.close()


def test_l2_skip_l1_drops_stored_objects_from_l1(lmcd_factory, tmp_path):
    d = tmp_path / "l2"
    srv = lmcd_factory(["--l1-size-gb", "0.05", "--l2-store-policy", "skip_l1", "--l2-adapter", fs_adapter(d)])
    w = Worker(srv)
    try:
        toks = tokens(21, 3)
        written = w.store(toks, 3)
        wait_l2_objects(srv, 3)
        wait_for(lambda: l1_objects(srv) == 0, timeout=10.0, what="skip_l1 empties L1 once stored")
        assert l2_status(srv)["store_controller"]["store_policy"] == "skip_l1"
    finally:
        w.close()
    hit_all(srv, toks, written, "skip")


def test_l2_stale_prefetch_answer_releases_its_locks(lmcd_factory):
    """END_SESSION while the tier is still loading: the late answer's read
    locks are released, nothing stays locked or reserved."""
    srv = lmcd_factory(["--l1-size-gb", "0.05", "--l2-adapter",
                        json.dumps({"type": "mock", "max_size_gb": 0.01, "mock_bandwidth_gb": 0.001})])
    w = Worker(srv)
    try:
        toks = tokens(31, 8)
        w.store(toks, 8)
        wait_l2_objects(srv, 8)
        clear_l1(srv)
        w.sched.lookup(make_key("m", toks, 0, 8 * CHUNK, "gone"))
        w.sched.end_session("gone")
        wait_for(lambda: l2_status(srv)["prefetch_controller"]["completed_results_count"] >= 1, timeout=20.0,
                 what="the prefetch finishes")
        l1 = l2_status(srv)["l1_manager"]
        assert l1["read_locked_count"] == 0 and l1["write_locked_count"] == 0, l1
        assert w.sched.query_prefetch_status("gone") == 0, "the ended request has no job any more"
    finally:
        w.close()


def test_l2_worker_ids_cannot_take_lmcds_own_writer_ids(lmcd_factory):
    """Instance ids double as L1 writer ids; the prefetch controller's and the
    inline stores' must not be registrable, or an UNREGISTER of that id would
    drop reservations an adapter is still loading into."""
    srv = lmcd_factory(["--l1-size-gb", "0.05"])
    c = Client(srv.url, timeout=10.0)
    try:
        for iid in (2**63 - 2, -1):
            reg = c.register_ed(ed_payload(iid, num_layers=LAYERS, hidden_dim_size=HIDDEN))
            assert reg.get("error") and "instance_id" in reg["error"], reg
        assert c.register_ed(ed_payload(5, num_layers=LAYERS, hidden_dim_size=HIDDEN)).get("error") is None
    finally:
        c.close()


# Names promtool 2.42's lint calls "abbreviated units" that stay: LMCache's
# exact throughput names (compatibility) and lmcd's per-adapter average
# latency gauges (src/server/status.c).
UNIT_LINT_OK = {"lmcache_mp_l2_store_throughput_GB_per_second", "lmcache_mp_l2_load_throughput_GB_per_second",
                "lmcd_l2_store_latency_avg_seconds", "lmcd_l2_lookup_latency_avg_seconds", "lmcd_l2_load_latency_avg_seconds"}


def promtool_lint_only_units(text):
    """`promtool check metrics`: the text parses (exit 1 is a format error)
    and the only lint findings (exit 3) are the unit names above."""
    if not shutil.which("promtool"):
        pytest.skip("promtool not installed (Debian package prometheus; mk/deps.sh installs it)")
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode in (0, 3), f"promtool check metrics failed:\n{r.stdout}{r.stderr}"
    for line in (r.stdout + r.stderr).splitlines():
        if line.strip():
            name, _, why = line.partition(" ")
            assert name in UNIT_LINT_OK and "abbreviated units" in why, f"promtool: {line}"


def test_l2_lmcache_metric_families_count_the_round_trip(lmcd_factory, tmp_path):
    """LMCache's lmcache_mp_l2_* families, labelled with the adapter's
    l2_name, count exactly what one store, one L1 clear and one lookup that
    L2 serves did; the scrape passes promtool."""
    from test_metrics import parse, total
    srv = lmcd_factory(["--l1-size-gb", "0.05", "--l2-adapter", fs_adapter(tmp_path / "l2")])
    n = 4
    round_trip(srv, n=n, seed=5)
    text = urllib.request.urlopen(srv.http + "/metrics", timeout=5).read().decode()
    promtool_lint_only_units(text)
    s, types = parse(text)
    p = "lmcache_mp_l2_"
    # store: one request to the one adapter, n objects, all landed
    assert total(s, p + "store_submitted_requests_total") == 1, text
    assert total(s, p + "store_completed_requests_total", l2_name="fs0") == 1
    assert total(s, p + "store_submitted_objects_chunks_total") == n
    assert total(s, p + "store_completed_objects_chunks_total") == n
    # the lookup after the clear: one prefetch, every chunk found and loaded
    assert total(s, p + "prefetch_lookup_requests_total") == 1
    assert total(s, p + "prefetch_lookup_objects_chunks_total") == n
    assert total(s, p + "prefetch_hit_chunks_total") == n
    assert total(s, p + "prefetch_load_submitted_requests_total") == 1
    assert total(s, p + "prefetch_load_submitted_objects_chunks_total") == n
    assert total(s, p + "load_completed_requests_total", l2_name="fs0") == 1
    assert total(s, p + "prefetch_load_completed_chunks_total") == n
    assert types[p + "prefetch_failure_total"] == "counter"
    assert total(s, p + "prefetch_failure_total") == 0
    assert types[p + "evicted_objects_chunks_total"] == "counter"
    assert total(s, p + "evicted_objects_chunks_total") == 0  # unbounded adapter: nothing evicted
    for d in ("store", "load"):
        h = p + d + "_throughput_GB_per_second"
        assert types[h] == "histogram"
        assert total(s, h + "_count", l2_name="fs0") == 1, text
        assert total(s, h + "_sum", l2_name="fs0") > 0
    # the lookup split the engine already counted agrees with the tier
    assert total(s, "lmcache_mp_lookup_hit_l2_keys_total") == n
    assert srv.stop() == 0
