#!/usr/bin/env python3
"""Example lmcd runtime plugin: prints a summary of the server config, then a
heartbeat line every 30 seconds until it is told to stop.

lmcd starts it with the whole server configuration as JSON in
LMCACHE_RUNTIME_PLUGIN_CONFIG (and in the file named by
LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE); every line it prints shows up in the
server log behind "[<path>] ". Standard library only.
"""
import json
import os
import signal
import sys
import time

TAG = "[mp_plugin]"
# Seconds between heartbeats; the variable exists so tests need not wait.
INTERVAL = float(os.environ.get("LMCD_EXAMPLE_HEARTBEAT_S", "30"))


def say(text):
    print(f"{TAG} {text}", flush=True)


def stop(signum, frame):
    say("Received termination signal, exiting...")
    sys.exit(0)


def load_config():
    raw = os.environ.get("LMCACHE_RUNTIME_PLUGIN_CONFIG", "")
    if not raw:
        # lmcd leaves the variable out when the JSON is too big for the
        # environment; the file always holds the same text.
        path = os.environ.get("LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE", "")
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    raw = f.read()
            except OSError as e:
                say(f"ERROR: cannot read {path}: {e}")
    if not raw:
        say("WARNING: LMCACHE_RUNTIME_PLUGIN_CONFIG is empty")
        return {}
    try:
        cfg = json.loads(raw)
    except ValueError as e:
        say(f"ERROR: failed to parse config: {e}")
        return {}
    return cfg if isinstance(cfg, dict) else {}


def get(cfg, *keys):
    """cfg[k1][k2]..., or "?" when any step is missing."""
    for k in keys:
        if not isinstance(cfg, dict) or k not in cfg:
            return "?"
        cfg = cfg[k]
    return cfg


def gib(n):
    return f"{n / 2**30:.1f}" if isinstance(n, (int, float)) and not isinstance(n, bool) else "?"


def main():
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    cfg = load_config()
    say("Started")
    mp = get(cfg, "mp_config")
    say(f"MP server: host={get(mp, 'host')}  port={get(mp, 'port')}  "
        f"chunk_size={get(mp, 'chunk_size')}")
    sm = get(cfg, "storage_manager_config")
    size = get(sm, "l1_manager_config", "memory_config", "size_in_bytes")
    say(f"Storage: L1={gib(size)}GB  eviction={get(sm, 'eviction_config', 'eviction_policy')}  "
        f"watermark={get(sm, 'eviction_config', 'trigger_watermark')}")
    obs = get(cfg, "obs_config")
    say(f"Observability: enabled={get(obs, 'enabled')}  metrics={get(obs, 'metrics_enabled')}  "
        f"tracing={get(obs, 'tracing_enabled')}")
    beat = 0
    while True:
        say(f"heartbeat #{beat}")
        beat += 1
        time.sleep(INTERVAL)


if __name__ == "__main__":
    main()
