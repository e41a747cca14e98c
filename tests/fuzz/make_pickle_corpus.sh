#!/bin/sh
# Regenerates tests/fuzz/corpus/pickle/ from tests/unit/test_pickle_gen.py
# (Debian's /usr/bin/python3, protocols 2-5). Run from the repository root.
set -e
for p in 2 3 4 5; do
    for v in cuda raw device big recurring evil; do
        /usr/bin/python3 tests/unit/test_pickle_gen.py "$p" "$v" | xxd -r -p \
            > "tests/fuzz/corpus/pickle/p${p}_$v"
    done
done
