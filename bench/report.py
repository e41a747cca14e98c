#!/usr/bin/python3
"""Turns a `make bench` run into its outputs.

Reads OUT/results.jsonl (one JSON object per figure, appended by the benches
through bench_report() in bench/common.c), then
  - prints one table: figure, lmcd, baseline, ratio (lmcd / baseline),
  - writes OUT/results.json: {"figures": [...], "host": ..., "quick": ...},
  - draws PNG plots with gnuplot under OUT/ (one bar chart of the ratios per
    group of figures, and the scale curves); prints a note and draws nothing
    when gnuplot is missing (mk/deps.sh installs it for tests and benches).

Usage: report.py OUT
"""
import json
import math
import os
import platform
import shutil
import subprocess
import sys


def load(out):
    figures = []
    with open(os.path.join(out, "results.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                figures.append(json.loads(line))
    return figures


def fmt(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if abs(v) >= 1000:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.3g" % v


def table(figures):
    w = max(len(f["figure"]) for f in figures) if figures else 10
    print("\n%-*s %12s %-8s %12s %-22s %8s" % (w, "figure", "lmcd", "unit", "baseline", "(baseline)", "ratio"))
    for f in figures:
        ratio = f.get("ratio")
        print("%-*s %12s %-8s %12s %-22s %8s" % (
            w, f["figure"], fmt(f.get("lmcd")), f["unit"], fmt(f.get("baseline")),
            f.get("baseline_name") or "", ("%.3fx" % ratio) if ratio is not None else "-"))


# Which figures each plot shows, by name prefix; the ratio is lmcd / baseline.
GROUPS = [
    ("engine_driven", "engine-driven path, lmcd / memcpy (higher is better)", ("ed ",)),
    ("control_path", "control path p50, lmcd / ZeroMQ echo (lower is better)", ("rpc ",)),
    ("plugins_hash", "plugin launch and hashing, lmcd / baseline", ("plugins ", "hash ")),
    ("data_baselines", "inline ops vs Redis, L2 adapter vs hiredis (higher is better)", ("inline ", "l2 ")),
    ("metrics", "counting on the request path, lmcd / a shared counter or lock (lower is better)", ("metrics ",)),
]


def gnuplot(script):
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def plots(out, figures):
    if not shutil.which("gnuplot"):
        print("report.py: gnuplot not found, no plots drawn (mk/deps.sh installs it)")
        return []
    made = []
    for name, title, prefixes in GROUPS:
        rows = [f for f in figures if f["figure"].startswith(prefixes) and f.get("ratio") is not None]
        if not rows:
            continue
        dat = os.path.join(out, name + ".dat")
        with open(dat, "w", encoding="utf-8") as d:
            for f in rows:
                d.write('"%s" %g\n' % (f["figure"], f["ratio"]))
        png = os.path.join(out, name + ".png")
        gnuplot("""set terminal pngcairo size 1200,%d noenhanced
set output '%s'
set title '%s'
set style data histogram
set style fill solid 0.8
set boxwidth 0.7
set yrange [0:*]
set xtics rotate by -35 left font ',9'
set grid ytics
set bmargin 12
set rmargin 14
unset key
plot '%s' using 2:xtic(1) lc rgb '#3b75af', 1 with lines lc rgb '#c03030' dt 2
""" % (520, png, title, dat))
        made.append(png)
    # The scale curves: cost per operation against the number of cached objects.
    scale = {}
    for f in figures:
        parts = f["figure"].split(" at ")
        if f["figure"].startswith("scale ") and len(parts) == 2 and f.get("lmcd") is not None:
            scale.setdefault(parts[0], []).append((float(parts[1].split()[0]), f["lmcd"], f["unit"]))
    if scale:
        dat = os.path.join(out, "scale.dat")
        with open(dat, "w", encoding="utf-8") as d:
            for series, pts in scale.items():
                d.write('# "%s"\n' % series)
                for n, v, _ in sorted(pts):
                    d.write("%g %g\n" % (n, v))
                d.write("\n\n")
        png = os.path.join(out, "scale.png")
        plot = ", ".join("'%s' index %d using 1:2 with linespoints title '%s (%s)'" % (
            dat, i, s, pts[0][2]) for i, (s, pts) in enumerate(scale.items()))
        gnuplot("""set terminal pngcairo size 1000,600 noenhanced
set output '%s'
set title 'cost per operation against cached objects (flat is the aim)'
set logscale x
set xlabel 'cached objects'
set yrange [0:*]
set grid
set key top left
plot %s
""" % (png, plot))
        made.append(png)
    return made


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/out"
    figures = load(out)
    table(figures)
    doc = {
        "host": platform.node(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "quick": os.environ.get("LMCD_BENCH_QUICK", "") not in ("", "0"),
        "figures": figures,
    }
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    made = plots(out, figures)
    print("\n%d figures -> %s/results.json%s" % (
        len(figures), out, "; plots: " + ", ".join(os.path.basename(p) for p in made) if made else ""))


if __name__ == "__main__":
    main()
