"""The repository stands on its own (issue 11, items 13 and 16).

A fresh clone builds and tests with nothing beside it: no file in the
repository reads ../shared or cites a path outside it, and a plain `make`
asks Debian only for the build dependencies (test tools come with `make test`).
"""
import os
import re
import stat
import subprocess

from conftest import ROOT


def tracked_files():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f]


def test_no_file_reads_or_cites_the_shared_folder_outside_the_repository():
    bad = []
    pat = re.compile(r"(\.\./shared\b|/work/shared|\bshared/(spec|data|tools|hooks)/|LMCD_SHARED_DIR)")
    for f in tracked_files():
        if f == "tests/e2e/test_repo_whole.py":
            continue
        try:
            with open(os.path.join(ROOT, f), encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if pat.search(line):
                        bad.append(f"{f}:{n}: {line.strip()}")
        except (UnicodeDecodeError, IsADirectoryError):
            continue
    assert not bad, "files that reach outside the repository:\n" + "\n".join(bad)


def test_blake3_vectors_are_in_the_repository_with_their_provenance():
    data = os.path.join(ROOT, "tests", "data")
    assert os.path.isfile(os.path.join(data, "blake3_test_vectors.json"))
    with open(os.path.join(data, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert "blake3_test_vectors.json" in readme and "BLAKE3-team/BLAKE3" in readme


def deps_wanted(tmp_path, *sets):
    """The packages mk/deps.sh would install for `sets`, on a machine that has none
    of them, as a non-root user (so it only prints the apt-get line)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, body in (("dpkg-query", "exit 1"), ("id", "echo 1000")):
        p = fake / name
        p.write_text("#!/bin/sh\n" + body + "\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    r = subprocess.run(["sh", "mk/deps.sh", *sets], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1, r.stderr
    m = re.search(r"apt-get install -y (.*)$", r.stderr, re.M)
    assert m, r.stderr
    return set(m.group(1).split())


def test_plain_build_asks_for_build_dependencies_only(tmp_path):
    build = deps_wanted(tmp_path)
    test = deps_wanted(tmp_path, "test")
    fuzz = deps_wanted(tmp_path, "fuzz")
    assert {"libzmq3-dev", "libmsgpack-dev", "pkg-config"} <= build
    tools = {"clang", "redis-server", "python3-pytest", "libcriterion-dev", "b3sum"}
    assert not (build & tools), f"a plain make would install test tools: {build & tools}"
    assert build < test and {"redis-server", "python3-pytest", "libcriterion-dev"} <= test
    assert build < fuzz and "clang" in fuzz and "redis-server" not in fuzz


def test_make_asks_deps_sh_for_the_sets_its_goals_need(tmp_path):
    """`make -n` runs mk/deps.sh at parse time; with nothing installed it names what it wants."""
    fake = tmp_path / "bin"
    deps_wanted(tmp_path)  # creates the fake dpkg-query and id
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")

    def wanted(goal):
        r = subprocess.run(["make", "-n", goal], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        m = re.search(r"apt-get install -y (.*)$", r.stderr, re.M)
        assert m, r.stderr
        return set(m.group(1).split())

    assert "redis-server" not in wanted("all") and "clang" not in wanted("all")
    assert "redis-server" in wanted("test")
    assert "clang" in wanted("fuzz")


def test_run_sh_counts_skips_and_says_why(tmp_path):
    """tests/run.sh ends with 'N passed, N failed, N skipped' and prints each
    skip with its reason, from Criterion ([SKIP] lines) and from pytest."""
    build = tmp_path / "build"
    (build / "tests").mkdir(parents=True)
    fake = build / "tests" / "test_fake"
    fake.write_text("#!/bin/sh\n"
                    "echo '[SKIP] fake::avx: CPU lacks avx512'\n"
                    "echo '[PASS] fake::one: (0.00s)'\n"
                    "echo '[====] Synthesis: Tested: 1 | Passing: 1 | Failing: 0 | Crashing: 0 '\n")
    fake.chmod(0o755)
    env = dict(os.environ, LMCD_BUILD=str(build), PYTEST_ARGS="-k test_lmcache_client_extended_scenario",
               LMCACHE_HARNESS="")
    env.pop("SAN", None)
    r = subprocess.run(["sh", "tests/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert "skipped unit test_fake fake::avx: CPU lacks avx512" in out, out
    assert re.search(r"skipped e2e \S*test_lmcache_client_extended_scenario: .*LMCACHE_HARNESS is not set", out), out
    assert r.stdout.strip().splitlines()[-1] == "1 passed, 0 failed, 2 skipped", out
    assert r.returncode == 0, out
