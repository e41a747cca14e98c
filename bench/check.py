#!/usr/bin/python3
"""CI check of a `make bench` run: every figure of bench/figures.txt is in
OUT/results.json with a finite lmcd value (and a finite baseline and ratio
when it has a baseline), and every plot is there. Speed is never judged:
this fails only when a bench stopped producing a figure.

Usage: check.py OUT   (exit 0 = all there; 1 = what is missing is listed)
"""
import json
import math
import os
import sys


def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/out"
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "figures.txt"), encoding="utf-8") as f:
        wanted = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    try:
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            figures = {x["figure"]: x for x in json.load(f)["figures"]}
    except (OSError, ValueError, KeyError) as e:
        print("check.py: no usable %s/results.json: %s" % (out, e))
        return 1
    bad = []
    for name in wanted:
        if name.startswith("plot "):
            png = os.path.join(out, name[5:])
            if not os.path.isfile(png) or os.path.getsize(png) == 0:
                bad.append("%s: missing" % name)
            continue
        x = figures.get(name)
        if x is None:
            bad.append("%s: missing" % name)
        elif not finite(x.get("lmcd")):
            bad.append("%s: lmcd value %r" % (name, x.get("lmcd")))
        elif x.get("baseline_name") and not (finite(x.get("baseline")) and finite(x.get("ratio"))):
            bad.append("%s: baseline %r, ratio %r" % (name, x.get("baseline"), x.get("ratio")))
    for b in bad:
        print("check.py: " + b)
    print("check.py: %d of %d figures and plots present" % (len(wanted) - len(bad), len(wanted)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
