#!/bin/sh
# Runs every test: the Criterion unit binaries, then the pytest end-to-end
# suite against the real binaries in $LMCD_BUILD. Prints every skipped test
# with its reason, then one summary line "N passed, N failed, N skipped" last,
# and exits non-zero when anything failed.
BUILD=${LMCD_BUILD:-build}
passed=0
failed=0
skipped=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Nothing left behind (issue 11 item 14): every lmcd the suite starts names
# its L1 segment under this run's prefix and writes plugin config files in
# $TMPDIR; both are checked at the end. Parallel runs use other prefixes.
export LMCD_TEST_SHM_PREFIX="lmcdt$$_"
mkdir -p "$tmp/run"
export TMPDIR="$tmp/run"

# ThreadSanitizer (SAN=thread): a unit test stops at its first race, so
# Criterion reports that test failed with the race in its log. Servers and
# tools the e2e tests start keep running and write each report to
# $tmp/tsan/report.<pid>; every report counts as one failure below.
# Criterion starts under TSan thanks to tests/tsan/criterion_arena.c;
# tests/tsan/tsan.supp says what is suppressed (libzmq's internals) and why.
if [ "${SAN:-}" = thread ]; then
    mkdir -p "$tmp/tsan"
    TSAN_BASE="second_deadlock_stack=1 suppressions=$(pwd)/tests/tsan/tsan.supp ${TSAN_OPTIONS:-}"
    export TSAN_OPTIONS="halt_on_error=1 $TSAN_BASE"
fi

for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    # --jobs 2: tests share nothing, but a 2-core machine gains little from more.
    # --verbose: Criterion names skipped tests ("[SKIP] suite::test: reason")
    # only then; they are not in its Synthesis counts.
    if "$t" --jobs 2 --short-filename --verbose >"$tmp/$name.log" 2>&1; then rc=0; else rc=$?; fi
    line=$(grep -E 'Synthesis: Tested:' "$tmp/$name.log" | tail -1)
    p=$(echo "$line" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
    f=$(echo "$line" | sed -n 's/.*Failing: \([0-9]*\).*/\1/p')
    c=$(echo "$line" | sed -n 's/.*Crashing: \([0-9]*\).*/\1/p')
    p=${p:-0}; f=${f:-0}; c=${c:-0}
    if [ -z "$line" ] || { [ "$rc" -ne 0 ] && [ $((f + c)) -eq 0 ]; }; then
        f=$((f + 1))   # the binary died before reporting: count it as a failure
    fi
    s=$(grep -c '^\[SKIP\]' "$tmp/$name.log")
    passed=$((passed + p)); failed=$((failed + f + c)); skipped=$((skipped + s))
    if [ $((f + c)) -ne 0 ]; then
        cat "$tmp/$name.log"
    fi
    grep '^\[SKIP\]' "$tmp/$name.log" | sed "s/^\[SKIP\] /skipped unit $name /"
    echo "unit $name: $p passed, $((f + c)) failed, $s skipped"
done

if ls tests/e2e/test_*.py >/dev/null 2>&1; then
    if [ "${SAN:-}" = thread ]; then
        export TSAN_OPTIONS="halt_on_error=0 log_path=$tmp/tsan/report $TSAN_BASE"
    fi
    LMCD_BUILD="$BUILD" /usr/bin/python3 -m pytest -q -p no:cacheprovider \
        --junitxml="$tmp/e2e.xml" tests/e2e ${PYTEST_ARGS:-} 2>&1 | tee "$tmp/e2e.log"
    if [ -s "$tmp/e2e.xml" ]; then
        counts=$(/usr/bin/python3 - "$tmp/e2e.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
sk = sum(int(s.get("skipped", 0)) for s in suites)
# every skip says why, on stderr so that stdout stays the three counts
for case in root.iter("testcase"):
    for s in case.findall("skipped"):
        name = case.get("classname", "") + "::" + case.get("name", "")
        print(f"skipped e2e {name}: {s.get('message') or 'no reason given'}", file=sys.stderr)
print(t - f - sk, f, sk)
PY
)
        set -- $counts
        passed=$((passed + $1)); failed=$((failed + $2)); skipped=$((skipped + $3))
    else
        failed=$((failed + 1))
    fi
fi

if [ "${SAN:-}" = thread ]; then
    races=0
    for r in "$tmp"/tsan/report.*; do
        [ -s "$r" ] || continue
        cat "$r"
        races=$((races + $(grep -c '^WARNING: ThreadSanitizer' "$r")))
    done
    echo "e2e ThreadSanitizer reports: $races"
    failed=$((failed + races))
fi

left=$( (ls /dev/shm | sed -n "s|^\($LMCD_TEST_SHM_PREFIX.*\)|/dev/shm/\1|p";
         ls "$TMPDIR" | sed -n "s|^\(lmcd-plugin-config\..*\)|$TMPDIR/\1|p") 2>/dev/null)
if [ -n "$left" ]; then
    echo "the suite left these behind:"
    echo "$left"
    for f in $left; do rm -f "$f"; done
    failed=$((failed + 1))
else
    echo "nothing left behind in /dev/shm or \$TMPDIR"
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
