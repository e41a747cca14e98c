"""The GPU path on a host without a CUDA driver (this machine and CI).

lmcd built with the CUDA backend (nvcc found) or without it must start at
once, say in one line why GPU requests are not served, leave GPU workers'
REGISTER_KV_CACHE / STORE / RETRIEVE unanswered with one ERROR line per
worker naming the reason and mp_transfer_mode=engine_driven (spec 9.3), and
keep serving engine-driven workers on the same server. Also: the GPU flags
(--supported-transfer-mode, --null-block-id, --isolated-ipc) and the
`lmcd --version` line naming the build. Nothing here touches a GPU.
"""
import os
import subprocess

import msgpack
import pytest

from conftest import wait_for
from lmcd_client import Segment
from test_protocol import clients  # noqa: F401
from test_protocol_engine import CHUNK, error_lines, register, store, worker_key
from test_protocol_engine import expect_unanswered as unanswered

BUILD = os.environ.get("LMCD_BUILD", "build")
LMCD = os.path.join(BUILD, "lmcd")
GEN = "tests/unit/test_pickle_gen.py"


def version_lines():
    out = subprocess.run([LMCD, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    return out.splitlines()


def cuda_built():
    return "GPU backend: CUDA" in version_lines()[1]


def wrapper(variant="cuda"):
    """A pickled LMCache CudaIPCWrapper stand-in, as the client sends it (ext 1)."""
    hexs = subprocess.run(["/usr/bin/python3", GEN, "4", variant], capture_output=True, text=True, timeout=20,
                          check=True).stdout
    return msgpack.ExtType(1, bytes.fromhex(hexs))


def test_version_names_the_build():
    lines = version_lines()
    assert lines[0].startswith("lmcd ")
    assert lines[1].startswith("GPU backend: "), lines
    # `make test` says whether it built with nvcc (CI and this host have it)
    expect = os.environ.get("LMCD_EXPECT_CUDA")
    if expect == "1":
        assert "CUDA driver API via dlopen" in lines[1] and "unrun on a GPU" in lines[1], lines
    elif expect == "0":
        assert "built without nvcc" in lines[1], lines


def test_no_driver_gpu_workers_logged_once_engine_driven_served(lmcd_factory, clients):  # noqa: F811
    s = lmcd_factory(["--l1-size-gb", "0.1", "--null-block-id", "-1"])
    reason = "libcuda.so.1" if cuda_built() else "built without nvcc"
    wait_for(lambda: "GPU path" in s.log(), 5.0, what="the GPU path start line")
    assert len([ln for ln in s.log().splitlines() if "GPU path" in ln]) == 1, s.log()
    # two GPU workers (TP 2): neither registration is answered, one line each
    w0, w1 = clients(s.url), clients(s.url)
    unanswered(w0, "register_kv_cache", 301, [wrapper()] * 2, "m", 2, "vllm", {"kv_layout": "NHD"}, [])
    unanswered(w1, "register_kv_cache", 302, [wrapper()] * 2, "m", 2, "vllm", {"kv_layout": "NHD"}, [])
    key = worker_key(list(range(CHUNK)), 0, CHUNK)
    unanswered(w0, "store", key, 301, [[1, 2]], b"\x00" * 64)
    unanswered(w0, "retrieve", key, 301, [[1, 2]], b"\x00" * 64, 0)
    for iid in (301, 302):
        wait_for(lambda: error_lines(s, iid), 5.0, what=f"the ERROR line for instance {iid}")
        lines = error_lines(s, iid)
        assert len(lines) == 1, s.log()
        assert reason in lines[0], lines
    # an engine-driven worker on the same server: a full store and lookup
    ed = clients(s.url)
    sched = clients(s.url)
    reg = register(ed, 303)
    seg = Segment(reg["shm_name"])
    try:
        toks = list(range(7, 7 + 2 * CHUNK))
        k = worker_key(toks, 0, 2 * CHUNK)
        written = store(ed, seg, k, 303, reg["pool_size"], [0, 1])
        assert ed.commit_store(k, 303) is True
        from lmcd_client import make_key
        sched.lookup(make_key("m", toks, 0, 2 * CHUNK, "gpu-nd"))
        assert sched.poll_prefetch_status("gpu-nd") == 2
        r = ed.prepare_retrieve(k, 303)
        assert r["success"] is True
        assert [seg.read(x["offset"], x["length"]) for x in r["context"]["slots"]] == [written[0], written[1]]
        assert ed.commit_retrieve(k, 303) is True
    finally:
        seg.close()
    assert w0.noop() == "OK"


def test_engine_driven_mode_and_flags(lmcd_factory, clients, tmp_path):  # noqa: F811
    s = lmcd_factory(["--l1-size-gb", "0.1", "--supported-transfer-mode", "engine_driven", "--null-block-id", "7",
                      "--isolated-ipc"])
    c = clients(s.url)
    unanswered(c, "register_kv_cache", 401, [wrapper()], "m", 1, "vllm", {}, [])
    wait_for(lambda: error_lines(s, 401), 5.0, what="the ERROR line for instance 401")
    assert "--supported-transfer-mode engine_driven" in error_lines(s, 401)[0]
    assert c.get_chunk_size() == 256
    out = subprocess.run([LMCD, "--l1-size-gb", "0.1", "--null-block-id", "-1", "--supported-transfer-mode",
                          "lmcache_driven", "--no-isolated-ipc", "--print-config"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0, out.stderr
    assert '"supported_transfer_mode": "lmcache_driven"' in out.stdout
    assert '"null_block_id": -1' in out.stdout
    bad = subprocess.run([LMCD, "--supported-transfer-mode", "gpu_only"], capture_output=True, text=True,
                         timeout=10)
    assert bad.returncode != 0 and "supported-transfer-mode" in bad.stderr


@pytest.mark.skipif(not os.path.exists("/usr/local/cuda/bin/nvcc"), reason="needs the CUDA build")
def test_isolated_ipc_refused_in_one_line(lmcd_factory, clients):  # noqa: F811
    if not cuda_built():
        pytest.skip("this build has no CUDA backend")
    s = lmcd_factory(["--l1-size-gb", "0.1", "--isolated-ipc"])
    wait_for(lambda: "GPU path unavailable" in s.log(), 5.0, what="the GPU path line")
    line = [ln for ln in s.log().splitlines() if "GPU path unavailable" in ln]
    assert len(line) == 1 and "isolated_ipc=false" in line[0], s.log()
    c = clients(s.url)
    unanswered(c, "register_kv_cache", 501, [wrapper()], "m", 1, "vllm", {}, [])
    wait_for(lambda: error_lines(s, 501), 5.0, what="the ERROR line for instance 501")
    assert "isolated" in error_lines(s, 501)[0]


def test_gpu_script_dry_run():
    """tests/gpu/gpu_test.py --dry-run: the GPU run's client (ctypes libzmq, no
    pyzmq) against this build, everything but the GPU."""
    env = dict(os.environ)
    env.pop("LMCD_BUNDLE_LIB", None)
    r = subprocess.run(["/usr/bin/python3", "tests/gpu/gpu_test.py", "--dry-run", "--lmcd", LMCD],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS: 0 failed" in r.stdout and "FAIL " not in r.stdout, r.stdout
