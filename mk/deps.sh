#!/bin/sh
# Install the Debian packages lmcd needs to build, test and fuzz, when missing.
# Idempotent and quiet: prints nothing and runs no apt command when all is there.
set -e
PKGS="build-essential pkg-config libzmq3-dev libmsgpack-dev libjansson-dev libmicrohttpd-dev
libhiredis-dev libxxhash-dev libcriterion-dev python3-pytest python3-zmq python3-msgpack
redis-server b3sum clang libclang-rt-14-dev gnuplot-nox"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "mk/deps.sh: installing missing Debian packages:$missing" >&2
if [ "$(id -u)" != 0 ]; then
    echo "mk/deps.sh: not root; install them with: apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq $missing >/dev/null
