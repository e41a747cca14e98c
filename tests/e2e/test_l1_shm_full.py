"""A full /dev/shm never takes lmcd down.

L1 is a lazy tmpfs segment: its pages are allocated on first touch, so an L1
larger than what /dev/shm has left would raise SIGBUS on the first write past
the free space. lmcd commits each reservation's pages (fallocate) before
anyone writes them and skips the chunk when that fails. The test runs lmcd in
its own mount namespace with an 8 MiB /dev/shm and a 64 MiB L1 (needs root
and unshare; skipped where the namespace cannot be made).
"""
import os
import shutil
import signal
import subprocess

import pytest

from conftest import LMCD, READY_LINE, free_port, wait_for
from lmcd_client import Client, make_key

CHUNK = 256
OBJ = 1 << 20


def can_unshare():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                       capture_output=True, timeout=10)
    return r.returncode == 0


@pytest.mark.skipif(not can_unshare(), reason="needs root and unshare --mount to give lmcd a small /dev/shm")
def test_l1_larger_than_dev_shm_skips_chunks_and_keeps_serving(tmp_path):
    port, http_port = free_port(), free_port()
    log_path = tmp_path / "lmcd.log"
    script = 'mount -t tmpfs -o size=8m tmpfs /dev/shm && exec "$0" "$@"'
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", script, LMCD, "--host", "127.0.0.1",
                                 "--port", str(port), "--http-host", "127.0.0.1", "--http-port", str(http_port),
                                 "--l1-size-gb", "0.0625"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: READY_LINE in log_path.read_text() or proc.poll() is not None, what="lmcd ready")
        assert proc.poll() is None, log_path.read_text()
        assert "/dev/shm has" in log_path.read_text(), "lmcd warns that L1 is larger than /dev/shm"
        with Client(f"tcp://127.0.0.1:{port}", timeout=10) as c:
            tokens = list(range(40 * CHUNK))
            chunks = [bytes([i]) * OBJ for i in range(40)]
            key = make_key("m", tokens, 0, 40 * CHUNK, "r", 1, 0)
            present = c.store_inline(key, chunks)
            assert 0 < present < 40, f"{present} of 40 one-MiB chunks cannot all fit in 8 MiB"
            assert c.ping() is True, "still serving"
            got = c.retrieve_inline(key)
            assert got and all(g == chunks[i] for i, g in enumerate(got)), "what was stored reads back intact"
            # after a clear, the pages already committed are reused: stores succeed again
            c.clear(True)
            again = c.store_inline(make_key("m", tokens, 0, 40 * CHUNK, "r2", 1, 0), chunks)
            assert again >= 1
        log = log_path.read_text()
        assert "cannot commit" in log and "/dev/shm is full" in log
        assert log.count("cannot commit") <= 6, "rate-limited"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log_path.read_text()
