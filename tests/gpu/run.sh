#!/bin/sh
# The GPU run of lmcd's LMCache-driven path: ONE command on an x86-64 host
# with an NVIDIA H100/H200, CUDA 13 driver, PyTorch 2.11, Python 3.12 with
# msgpack (no pyzmq, no Debian packages, no network needed).
#
# On the build host:  make gpu-bundle      (-> build/gpu-bundle/)
# Copy that folder to the GPU host, then:  ./run.sh
#   ./run.sh --dry-run   the wire code only, no GPU (also runs on the build host)
# Environment: PYTHON (default python3), LMCD_GPU_TIMEOUT (seconds, default 480).
# Exit status 0 only when every check passed. The output ends with the
# store/retrieve GB/s lines and lmcd's log.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
if [ ! -x "$HERE/lmcd" ]; then
    echo "run.sh: no lmcd next to this script; build the bundle with 'make gpu-bundle' and run build/gpu-bundle/run.sh" >&2
    exit 2
fi
case "${1:-}" in
    ""|--dry-run) ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (use --dry-run or nothing)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
"$PY" -c 'import msgpack, torch' || { echo "run.sh: $PY needs msgpack and torch" >&2; exit 2; }
# lmcd finds its libraries here; the Python client preloads them by path
# (Python itself keeps the host's libraries).
export LMCD_BUNDLE_LIB="$HERE/lib"
export LMCD_LD_LIBRARY_PATH="$HERE/lib"
exec timeout "${LMCD_GPU_TIMEOUT:-480}" "$PY" "$HERE/gpu_test.py" --lmcd "$HERE/lmcd" "$@"
