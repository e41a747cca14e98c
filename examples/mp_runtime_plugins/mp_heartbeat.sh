#!/bin/bash
# Example lmcd runtime plugin in bash: prints a few config values, then a
# heartbeat line every 30 seconds until it is told to stop.
#
# The config arrives as one-line JSON in LMCACHE_RUNTIME_PLUGIN_CONFIG (and in
# the file named by LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE). It is read with bash
# pattern matching only, no jq: good for the few scalar keys printed here,
# which appear once each in the config (the first match wins).

TAG="[mp_heartbeat]"
INTERVAL="${LMCD_EXAMPLE_HEARTBEAT_S:-30}"

stop() {
    echo "$TAG Received termination signal, exiting..."
    exit 0
}
trap stop TERM INT

cfg="${LMCACHE_RUNTIME_PLUGIN_CONFIG:-}"
if [ -z "$cfg" ] && [ -r "${LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE:-}" ]; then
    cfg="$(<"$LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE")"
fi

# json_get KEY: the value of the first "KEY": string or scalar, else "?".
json_get() {
    local re="\"$1\": *(\"([^\"]*)\"|([^,}\" ]+))"
    if [[ $cfg =~ $re ]]; then
        printf '%s' "${BASH_REMATCH[2]}${BASH_REMATCH[3]}"
    else
        printf '?'
    fi
}

echo "$TAG Started"
if [ -n "$cfg" ]; then
    echo "$TAG MP server: host=$(json_get host)  port=$(json_get port)  chunk_size=$(json_get chunk_size)  eviction=$(json_get eviction_policy)"
else
    echo "$TAG config empty; raw config:"
    echo "$cfg"
fi

beat=0
while true; do
    echo "$TAG heartbeat #$beat"
    beat=$((beat + 1))
    # in the background so the trap runs at once, not after the sleep
    sleep "$INTERVAL" &
    wait $!
done
