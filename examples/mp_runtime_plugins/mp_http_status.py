#!/usr/bin/env python3
"""Example lmcd runtime plugin that talks to the server's HTTP API.

It reads http_config from the config JSON, asks GET /healthcheck and
GET /status, prints a one-line summary of each, then checks the health again
every 30 seconds. lmcd starts plugins only once its HTTP port listens, so the
first request succeeds; a few retries cover servers that start plugins
earlier (LMCache does). Standard library only.
"""
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

TAG = "[mp_http_status]"
INTERVAL = float(os.environ.get("LMCD_EXAMPLE_HEARTBEAT_S", "30"))


def say(text):
    print(f"{TAG} {text}", flush=True)


def stop(signum, frame):
    say("Received termination signal, exiting...")
    sys.exit(0)


def load_config():
    raw = os.environ.get("LMCACHE_RUNTIME_PLUGIN_CONFIG", "")
    path = os.environ.get("LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE", "")
    if not raw and path:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    try:
        cfg = json.loads(raw) if raw else {}
    except ValueError as e:
        say(f"ERROR: failed to parse config: {e}")
        cfg = {}
    return cfg if isinstance(cfg, dict) else {}


def base_url(cfg):
    http = cfg.get("http_config") or {}
    host = http.get("http_host") or "127.0.0.1"
    port = http.get("http_port") or 8080
    # a wildcard bind address is not something to connect to
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def get(url, tries=5):
    """(status, body text), retrying a refused connection a few times."""
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as e:
            if attempt == tries - 1:
                return None, str(e)
            time.sleep(0.5)
    return None, "unreachable"


def summary(body):
    try:
        st = json.loads(body)
    except ValueError:
        return body[:200]
    if not isinstance(st, dict):
        return body[:200]
    keys = ("is_healthy", "engine_type", "chunk_size", "active_sessions")
    return "  ".join(f"{k}={st.get(k, '?')}" for k in keys)


def main():
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    base = base_url(load_config())
    say(f"Started; server HTTP API at {base}")
    code, body = get(base + "/healthcheck")
    say(f"healthcheck: HTTP {code} {body.strip()[:200]}")
    code, body = get(base + "/status")
    say(f"status: HTTP {code} {summary(body) if code == 200 else body.strip()[:200]}")
    beat = 0
    while True:
        time.sleep(INTERVAL)
        code, _ = get(base + "/healthcheck", tries=1)
        say(f"heartbeat #{beat} healthcheck=HTTP {code}")
        beat += 1


if __name__ == "__main__":
    main()
