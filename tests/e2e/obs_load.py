"""A small, bounded load for the observability tests (metrics, dashboard,
top): inline stores and retrieves, scheduler lookups, a malformed request,
under two models and two cache salts. Every call has a timeout; the loop
count bounds the run."""
import random

from lmcd_client import Client, make_key

CHUNK = 16
MODELS = ("obs/model-a", "obs/model-b")
SALTS = ("", "tenant-1")


def server_args(extra=()):
    return ["--chunk-size", str(CHUNK), "--l1-size-gb", "0.05"] + list(extra)


def tokens(seed, n_chunks):
    base = seed * 1_000_003
    return [(base + i) % 2_000_000_000 for i in range(n_chunks * CHUNK)]


def run_load(url, rounds=20, seed=1):
    """Returns what it did: {"stored": chunks, "lookups": n, "hit_chunks": n}."""
    rng = random.Random(seed)
    done = {"stored": 0, "lookups": 0, "hit_chunks": 0, "requested_chunks": 0}
    with Client(url, profile="lmcache-2609", timeout=10.0) as w, \
            Client(url, profile="lmcache-2609", timeout=10.0) as s:
        for i in range(rounds):
            model, salt = MODELS[i % 2], SALTS[(i // 2) % 2]
            toks = tokens(seed * 1000 + i, 4)
            chunks = [rng.randbytes(2048) for _ in range(3)]
            k = make_key(model, toks, 0, 3 * CHUNK, f"w{i}", worker_id=0, cache_salt=salt)
            done["stored"] += w.store_inline(k, chunks)
            assert w.retrieve_inline(k) == chunks
            rid = f"s{seed}-{i}"
            s.lookup(make_key(model, toks, 0, 4 * CHUNK, rid, cache_salt=salt))
            hits = s.poll_prefetch_status(rid)
            done["lookups"] += 1
            done["hit_chunks"] += hits
            done["requested_chunks"] += 4
            s.end_session(rid)
        s.send_raw([b"\x00garbage"])  # one bad request: counted, never answered
    return done
