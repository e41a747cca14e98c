#!/bin/bash
# Runs LMCache's own Python MP client (through an external harness directory,
# see its README) against a fresh build/lmcd.
#
#   tools/run_lmcache_client.sh [run_client.py options, e.g. --extended --trace]
#
# Starts $LMCD_BUILD/lmcd (default build/) on free 127.0.0.1 ports, checks that
# the LMCache client tree is set up (setup_tree.py verifies the LMCache files
# by size and SHA-256), runs run_client.py, stops lmcd.
#
# Environment:
#   LMCD_BUILD            build directory holding lmcd (default: build)
#   LMCACHE_HARNESS       harness directory holding run_client.py and
#                         setup_tree.py; it is not part of this repository,
#                         so without it the run is skipped
#   LMCACHE_CLIENT_TREE   LMCache client tree (default: /tmp/lmcache_client)
#   LMCD_ARGS             extra lmcd arguments
#
# Exit status: the harness's (0 = every step passed), 77 = skipped (no
# harness or no verified client tree; the reason is printed), 2 = lmcd did
# not start.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
BUILD="$ROOT/${LMCD_BUILD:-build}"
LMCD="$BUILD/lmcd"
TREE=${LMCACHE_CLIENT_TREE:-/tmp/lmcache_client}

skip() { echo "SKIP: $*"; exit 77; }

HARNESS=${LMCACHE_HARNESS:-}
[ -n "$HARNESS" ] || skip "LMCACHE_HARNESS is not set (the LMCache client harness is not part of this repository)"
[ -f "$HARNESS/run_client.py" ] || skip "no run_client.py in LMCACHE_HARNESS=$HARNESS"
[ -d "$TREE" ] || skip "$TREE does not exist: fetch LMCache's client files first (harness README, section 1)"
[ -x "$LMCD" ] || { echo "no lmcd at $LMCD: run make first"; exit 2; }
"$PY" -c "import zmq, msgpack, torch" 2>/dev/null || skip "python3-zmq, python3-msgpack or python3-torch missing"
if ! out=$("$PY" "$HARNESS/setup_tree.py" --tree "$TREE" 2>&1); then
    echo "$out"
    skip "LMCache client tree $TREE is not verified"
fi

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
PORT=$(free_port)
HTTP_PORT=$(free_port)
LOG=$(mktemp /tmp/lmcd-lmcache-client.XXXXXX.log)

# shellcheck disable=SC2086
"$LMCD" --host 127.0.0.1 --port "$PORT" --http-host 127.0.0.1 --http-port "$HTTP_PORT" \
    --l1-size-gb 0.1 ${LMCD_ARGS:-} >"$LOG" 2>&1 &
LMCD_PID=$!

stop_lmcd() {
    if kill -0 "$LMCD_PID" 2>/dev/null; then
        kill -TERM "$LMCD_PID" 2>/dev/null
        for _ in $(seq 1 100); do
            kill -0 "$LMCD_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$LMCD_PID" 2>/dev/null
    fi
    wait "$LMCD_PID" 2>/dev/null
}
trap stop_lmcd EXIT

ready=0
for _ in $(seq 1 200); do    # bounded: 200 x 50 ms
    if grep -q "LMCache cache server is running" "$LOG"; then ready=1; break; fi
    kill -0 "$LMCD_PID" 2>/dev/null || break
    sleep 0.05
done
if [ "$ready" != 1 ]; then
    echo "lmcd did not start; its log:"
    cat "$LOG"
    exit 2
fi

echo "# lmcd pid $LMCD_PID on tcp://127.0.0.1:$PORT, log $LOG"
timeout 300 "$PY" "$HARNESS/run_client.py" --tree "$TREE" --port "$PORT" "$@"
rc=$?
stop_lmcd
trap - EXIT
if [ "$rc" != 0 ]; then
    echo "# lmcd log:"
    tail -n 50 "$LOG"
else
    rm -f "$LOG"
fi
exit "$rc"
