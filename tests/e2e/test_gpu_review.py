"""The GPU path's failure edges (adversarial review), against the emulated
driver (tests/gpu/fakecuda); unrun on a GPU."""
import time

import pytest

from conftest import wait_for
from test_gpu_emulated import (CHUNK, FAKE_DIR, Cache, Event, _cuda_build, event_done, fake_errors, key_of, lookup,
                               register, store, wait_reply_event)
from test_protocol import clients  # noqa: F401

pytestmark = pytest.mark.skipif(not _cuda_build(),
                                reason="built without nvcc: no CUDA backend, so no emulated driver to load")


def test_a_copy_failing_after_its_kernel_was_queued_keeps_its_bounce_slot(lmcd_factory, clients):  # noqa: F811
    """A STORE whose piece fails after its gather was queued behind the
    worker's event (here: the reply event's handle cannot be had) must keep
    what that gather writes to (bounce slot or L1 object) until the stream
    ran it: a RETRIEVE given the same slot meanwhile would hand the worker
    the failed STORE's bytes."""
    # every copy bounces (no pinning); the 2nd cuIpcGetEventHandle fails: STORE a's
    env = {"LD_LIBRARY_PATH": FAKE_DIR, "FAKECUDA_DEVICES": "1", "FAKECUDA_PIN_FAIL": "1",
           "FAKECUDA_FAIL_EVENT_HANDLE": "2"}
    s = lmcd_factory(["--l1-size-gb", "0.1"], env=env)
    wait_for(lambda: "GPU path: CUDA driver loaded" in s.log(), 10.0, what="the GPU path line")
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=2)
    register(c, 81, cache)
    bpc = CHUNK // cache.bs
    src_b, src_a = list(range(1, 1 + bpc)), list(range(1 + bpc, 1 + 2 * bpc))
    dst = list(range(cache.nb - bpc, cache.nb))
    cache.fill(src_b, 3)
    cache.fill(src_a, 4)
    assert cache.blocks(src_a) != cache.blocks(src_b)
    toks_b, toks_a = list(range(100, 100 + CHUNK)), list(range(20000, 20000 + CHUNK))
    assert store(s, c, 81, key_of(toks_b, 0, CHUNK, "b"), src_b)
    assert lookup(sched, toks_b, CHUNK, "bl", want=1) == 1
    ev = Event()
    ev.record()  # STORE a waits for it on the stream
    handle, ok = c.call("store", key_of(toks_a, 0, CHUNK, "a"), 81, [src_a], ev.handle, timeout=10.0)
    assert not event_done(handle)
    ev2 = Event()
    uid = c.submit("retrieve", key_of(toks_b, 0, CHUNK, "bl"), 81, [dst], ev2.handle, 0)
    time.sleep(0.2)
    ev.complete()
    handle2, ok2 = c.wait(uid, 60.0)
    wait_reply_event(s, handle2)
    wait_reply_event(s, handle)
    assert ok2 is True
    assert cache.blocks(dst) == cache.blocks(src_b), "the RETRIEVE delivered the failed STORE's bytes"
    assert lookup(sched, toks_a, CHUNK, "al") == 0, "the failed STORE was published"
    assert [ln for ln in fake_errors(s) if "FAKECUDA_FAIL_EVENT_HANDLE" not in ln and "PIN_FAIL" not in ln] == [], \
        s.log()
    ev.close()
    ev2.close()

