#!/bin/sh
# Install the Debian packages lmcd needs, when missing, by purpose:
#
#   sh mk/deps.sh            the build: what a plain `make` needs (libraries, compiler)
#   sh mk/deps.sh test       plus what `make test` and `make bench` run (Criterion,
#                            pytest, redis-server, b3sum...)
#   sh mk/deps.sh fuzz       plus what `make fuzz` needs (clang and its libFuzzer runtime)
#
# The build set is always included. To add a package, add its name to the one
# list that needs it (one name per line keeps merges clean).
# Idempotent and quiet: prints nothing and runs no apt command when all is there.
set -e

BUILD_PKGS="
build-essential
pkg-config
libzmq3-dev
libmsgpack-dev
libjansson-dev
libmicrohttpd-dev
libhiredis-dev
libxxhash-dev
"

TEST_PKGS="
libcriterion-dev
python3-pytest
python3-zmq
python3-msgpack
python3-numpy
redis-server
redis-tools
b3sum
librust-blake3-dev
gnuplot-nox
prometheus
chromium
"

FUZZ_PKGS="
clang
libclang-rt-14-dev
"

PKGS=$BUILD_PKGS
for set in "$@"; do
    case "$set" in
        build) ;;
        test) PKGS="$PKGS $TEST_PKGS" ;;
        fuzz) PKGS="$PKGS $FUZZ_PKGS" ;;
        *) echo "mk/deps.sh: unknown set '$set' (build, test or fuzz)" >&2; exit 2 ;;
    esac
done

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
