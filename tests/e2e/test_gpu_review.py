"""The GPU path's failure edges (adversarial review), against the emulated
driver (tests/gpu/fakecuda); unrun on a GPU."""
import json
import os
import struct
import time
import urllib.request

import pytest

from conftest import wait_for
from test_gpu_emulated import (CHUNK, Cache, Event, _cuda_build, event_done, fake_errors, key_of, lookup, register,
                               retrieve, store, wait_reply_event)
from test_gpu_emulated import gpu_lmcd  # noqa: F401 (the fixture)
from test_gpu_lifecycle import Pinger, mappings_open
from test_protocol import clients  # noqa: F401

pytestmark = pytest.mark.skipif(not _cuda_build(),
                                reason="built without nvcc: no CUDA backend, so no emulated driver to load")


def http_get(s, path):
    with urllib.request.urlopen(s.http + path, timeout=10) as r:
        return r.read().decode()


def test_a_copy_failing_after_its_kernel_was_queued_keeps_its_bounce_slot(gpu_lmcd, clients):  # noqa: F811
    """A STORE whose piece fails after its gather was queued behind the
    worker's event (here: the reply event's handle cannot be had) must keep
    what that gather writes to (bounce slot or L1 object) until the stream
    ran it: a RETRIEVE given the same slot meanwhile would hand the worker
    the failed STORE's bytes."""
    # every copy bounces (no pinning); the 2nd cuIpcGetEventHandle fails: STORE a's
    s = gpu_lmcd(env={"FAKECUDA_PIN_FAIL": "1", "FAKECUDA_FAIL_EVENT_HANDLE": "2"})
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


def test_a_larger_block_table_does_not_wait_for_queued_copies(gpu_lmcd, clients):  # noqa: F811
    """A copy whose block table outgrows the registration's device scratch
    must not free the old one while an earlier copy (waiting on its worker's
    event) may still read it: freeing device memory waits for the device in
    practice (the emulated driver drains the context's streams), so the
    STORE's reply would wait on the GPU, and on a stuck event forever."""
    s = gpu_lmcd(env={"FAKECUDA_PIN_FAIL": "1"})
    c, sched = clients(s.url, timeout=60.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=1, nb=600, bs=4)
    register(c, 82, cache)
    bpc = CHUNK // cache.bs
    ev = Event()
    ev.record()  # the first STORE waits for it on the stream
    small = list(range(1, 1 + bpc))
    h1, ok1 = c.call("store", key_of(list(range(7, 7 + CHUNK)), 0, CHUNK, "s1"), 82, [small], ev.handle,
                     timeout=10.0)
    assert ok1 is True and not event_done(h1)
    # 8 chunks (under the 16 bounce slots, one held by the first STORE):
    # 8 x (64 block ids + 1 address) x 8 bytes > the first scratch's 4096
    n = 8
    big = list(range(1 + bpc, 1 + bpc + n * bpc))
    toks = list(range(40000, 40000 + n * CHUNK))
    ev2 = Event()
    t0 = time.monotonic()
    h2, ok2 = c.call("store", key_of(toks, 0, n * CHUNK, "s2"), 82, [big], ev2.handle, timeout=10.0)
    took = time.monotonic() - t0
    ev.complete()
    assert ok2 is True
    assert took < 10.0, f"the STORE's reply waited {took:.1f} s for an earlier copy's event"
    wait_reply_event(s, h1)
    wait_reply_event(s, h2)
    assert lookup(sched, toks, n * CHUNK, "s2l", want=n) == n
    assert fake_errors(s) == [ln for ln in fake_errors(s) if "PIN_FAIL" in ln], s.log()
    ev.close()
    ev2.close()


def test_unregister_does_not_wait_for_another_workers_stuck_copy(gpu_lmcd, clients):  # noqa: F811
    """Two workers on one GPU (TP ranks, two engines): UNREGISTER of one with
    nothing queued answers at once while the other's copy waits on an event
    that never completes. Freeing device memory (cuMemFree, cuMemFreeHost)
    waits for the device in practice, which the emulated driver models by
    draining the context's streams: the backend's reaper thread frees it,
    never the thread that answers the UNREGISTER."""
    s = gpu_lmcd()
    a, b = clients(s.url, timeout=30.0), clients(s.url, timeout=30.0)
    ca, cb = Cache("fa_nhd", "bf16", layers=1), Cache("fa_nhd", "bf16", layers=1, seed=2)
    register(a, 93, ca)
    register(b, 94, cb)
    bpc = CHUNK // ca.bs
    assert store(s, a, 93, key_of(list(range(5, 5 + CHUNK)), 0, CHUNK, "a93"), list(range(1, 1 + bpc)))
    ev = Event()
    ev.record()  # never completed while the UNREGISTER runs
    h, ok = b.call("store", key_of(list(range(9, 9 + CHUNK)), 0, CHUNK, "b94"), 94, [list(range(1, 1 + bpc))],
                   ev.handle, timeout=10.0)
    assert ok is True and not event_done(h)
    t0 = time.monotonic()
    un = a.submit("unregister_kv_cache", 93)
    try:
        assert a.wait(un, 10.0) is None
    finally:
        took = time.monotonic() - t0
        ev.complete()
    assert took < 5.0, f"UNREGISTER waited {took:.1f} s for another worker's copy"
    wait_reply_event(s, h)
    ev.close()
    # the reaper freed A's resources once the device drained: nothing leaks
    assert s.stop() == 0
    assert "fakecuda: leak" not in s.log(), s.log()
    assert fake_errors(s) == [], s.log()


def _two_workers_one_stuck(s, clients, ia, ib):  # noqa: F811
    """Workers ia and ib on one GPU; ia stored once (so it counts as active),
    ib has a STORE queued behind an event that is not completed. Returns
    (client a, client b, cache a, the event, ib's reply handle)."""
    a, b = clients(s.url, timeout=30.0), clients(s.url, timeout=30.0)
    ca, cb = Cache("fa_nhd", "bf16", layers=1), Cache("fa_nhd", "bf16", layers=1, seed=2)
    register(a, ia, ca)
    register(b, ib, cb)
    bpc = CHUNK // ca.bs
    assert store(s, a, ia, key_of(list(range(5, 5 + CHUNK)), 0, CHUNK, f"a{ia}"), list(range(1, 1 + bpc)))
    ev = Event()
    ev.record()  # not completed until the test says so
    h, ok = b.call("store", key_of(list(range(9, 9 + CHUNK)), 0, CHUNK, f"b{ib}"), ib, [list(range(1, 1 + bpc))],
                   ev.handle, timeout=10.0)
    assert ok is True and not event_done(h)
    return a, b, ca, ev, h


def _ends_clean(s, h, ev, mappings, what):
    """Once the stuck event completed: the copy reports, the reaper frees
    what waited for the device (`mappings` IPC references stay open), and
    the stop is clean (no leak, no driver error)."""
    wait_reply_event(s, h)
    wait_for(lambda: mappings_open(s) == mappings, 10.0, what=what)
    ev.close()
    assert s.stop() == 0
    assert "fakecuda: leak" not in s.log(), s.log()
    assert fake_errors(s) == [], s.log()


def test_reregister_does_not_wait_for_another_workers_stuck_copy(gpu_lmcd, clients):  # noqa: F811
    """A re-REGISTER replaces the worker's registration: the old one's
    device memory and mappings are freed by the reaper, which waits for the
    device (here: another worker's copy stuck on its event). The REGISTER
    answers at once, the new registration serves (its handle, reopened while
    the old mapping is still open, only counts a reference), and the old
    resources are freed once the device drains."""
    s = gpu_lmcd(env={"FAKECUDA_TRACE": "1"})
    a, b, ca, ev, h = _two_workers_one_stuck(s, clients, 151, 152)
    sched = clients(s.url, timeout=30.0)
    bpc = CHUNK // ca.bs
    try:
        t0 = time.monotonic()
        register(a, 151, ca)  # the same cache: the same IPC handle
        took = time.monotonic() - t0
        assert took < 5.0, f"re-REGISTER waited {took:.1f} s for another worker's copy"
        # the new registration serves while the old one's free still waits for the device
        toks = list(range(700, 700 + CHUNK))
        src, dst = list(range(1 + bpc, 1 + 2 * bpc)), list(range(ca.nb - bpc, ca.nb))
        ca.fill(src, 6)
        assert store(s, a, 151, key_of(toks, 0, CHUNK, "n1"), src)
        assert lookup(sched, toks, CHUNK, "n1l", want=1) == 1
        assert retrieve(s, a, 151, key_of(toks, 0, CHUNK, "n1l"), dst)
        assert ca.blocks(dst) == ca.blocks(src)
    finally:
        ev.complete()
    # A's old mapping reference closes once the device drained: A's new one and B's stay
    _ends_clean(s, h, ev, 2, "the old registration's mapping closed")


def test_reaping_a_worker_while_another_is_stuck_leaves_status_answering(gpu_lmcd, clients):  # noqa: F811
    """The sweeper reaps a silent GPU worker while another worker's copy is
    stuck on its event. The reap hook runs under the lock /status and
    /metrics take for the backend's counters: it hands the registration to
    the reaper and returns, so both answer at once, and the reaped worker's
    resources are freed once the device drains."""
    s = gpu_lmcd(["--worker-reap-timeout-seconds", "1"], env={"FAKECUDA_TRACE": "1"})
    _, b, _, ev, h = _two_workers_one_stuck(s, clients, 161, 162)
    pinger = Pinger(clients(s.url, timeout=30.0), 162)  # the stuck worker stays alive
    try:
        s.wait_log("worker instance 161 silent for over 1 s", 20.0)  # the reap hook runs right after
        time.sleep(0.5)
        for path in ("/status", "/metrics"):
            t0 = time.monotonic()
            body = http_get(s, path)
            took = time.monotonic() - t0
            assert took < 3.0 and body, f"{path} took {took:.1f} s while a reap waited for the device"
        s.wait_log("GPU worker instance 161 reaped for silence", 5.0)
        assert json.loads(http_get(s, "/status"))["gpu"]["enabled"] is True
        assert "lmcd_gpu_objects_total" in http_get(s, "/metrics")
        assert mappings_open(s) == 2, "a mapping closed while another worker's copy was stuck"
    finally:
        ev.complete()
        pinger.close()
    _ends_clean(s, h, ev, 1, "the reaped worker's mapping closed")


def test_shutdown_while_a_free_waits_on_another_workers_stuck_copy_is_bounded(gpu_lmcd, clients):  # noqa: F811
    """SIGTERM while the reaper is blocked freeing an unregistered worker's
    resources (the device never drains: another worker's copy is stuck on
    its event): the stop abandons both within its bound, exits 0, removes
    its L1 segment and leaves no process behind. Leak checking off for this
    server (the abandoned threads stay blocked, as in the other stuck
    shutdowns)."""
    s = gpu_lmcd(env={"ASAN_OPTIONS": "detect_leaks=0"})
    a, _, _, ev, _ = _two_workers_one_stuck(s, clients, 171, 172)
    assert a.call("unregister_kv_cache", 171, timeout=10.0) is None  # its free now waits for the device
    _stop_bounded(s, ev)


def _stop_bounded(s, ev):
    """SIGTERM with a copy stuck on `ev`: lmcd exits 0 within its bound
    (--stop-timeout-seconds 5 at most, 2 s of GPU grace), abandoning what
    waits, and leaves neither its L1 segment nor its process."""
    pid = s.proc.pid
    t0 = time.monotonic()
    try:
        assert s.stop(timeout=20.0) == 0
    finally:
        ev.complete()
        ev.close()
    assert time.monotonic() - t0 < 12.0
    assert "lmcd stops without waiting for them" in s.log(), s.log()
    assert not os.path.exists(f"/dev/shm/{s.shm_name}"), "the L1 segment was left behind"
    assert not os.path.exists(f"/proc/{pid}"), "lmcd's process is still there"


def test_shutdown_with_another_workers_stuck_copy_is_bounded(gpu_lmcd, clients):  # noqa: F811
    """A stop with two workers on one GPU, one of them with a copy stuck on
    its event: closing the idle one must not free device memory while the
    stuck stream waits (the free waits for the device), or the stop hangs.
    Leak checking off for this server, as in test_gpu_lifecycle's stuck
    shutdown (the abandoned copy's threads stay blocked)."""
    s = gpu_lmcd(env={"ASAN_OPTIONS": "detect_leaks=0"})
    _, _, _, ev, _ = _two_workers_one_stuck(s, clients, 95, 96)  # 95 first in the backend's table: closed first
    _stop_bounded(s, ev)


def test_a_client_event_that_cannot_be_opened_copies_nothing(gpu_lmcd, clients):  # noqa: F811
    """A STORE whose event handle cannot be opened (a dead worker's, a
    forged one) must not copy without waiting: the blocks may still be
    being written, and publishing them would serve wrong bytes."""
    s = gpu_lmcd()
    c, sched = clients(s.url, timeout=30.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=1)
    register(c, 97, cache)
    bpc = CHUNK // cache.bs
    toks = list(range(300, 300 + CHUNK))
    bogus = b"fkcudaE\0" + struct.pack("<II", 0x7ffffff0, 9999) + bytes(48)
    h, ok = c.call("store", key_of(toks, 0, CHUNK, "bog"), 97, [list(range(1, 1 + bpc))], bogus, timeout=10.0)
    wait_reply_event(s, h)
    assert ok is False
    time.sleep(0.2)
    assert lookup(sched, toks, CHUNK, "bogl") == 0, "stored without waiting for the worker's event"


def test_a_retrieve_queued_only_in_part_answers_false(gpu_lmcd, clients):  # noqa: F811
    """A RETRIEVE whose first piece is queued but whose next cannot be (its
    bounce slots are held behind a copy stuck on the worker's event) must
    not answer true: the worker would use blocks lmcd never wrote."""
    s = gpu_lmcd(["--gpu-event-timeout-seconds", "1"],
                 env={"FAKECUDA_PIN_FAIL": "1", "ASAN_OPTIONS": "detect_leaks=0"})
    c, sched = clients(s.url, timeout=30.0), clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=1, nb=330)  # 256 KiB objects: 16 bounce slots
    register(c, 98, cache)
    bpc = CHUNK // cache.bs
    toks = list(range(600, 600 + 2 * CHUNK))
    assert store(s, c, 98, key_of(toks, 0, 2 * CHUNK, "r2"), list(range(1, 1 + 2 * bpc)))
    assert lookup(sched, toks, 2 * CHUNK, "r2l", want=2) == 2
    ev = Event()
    ev.record()  # never completed: its STORE holds 15 of the 16 slots
    held = list(range(1 + 2 * bpc, 1 + 17 * bpc))
    toks15 = list(range(90000, 90000 + 15 * CHUNK))
    _, ok = c.call("store", key_of(toks15, 0, 15 * CHUNK, "h15"), 98, [held], ev.handle, timeout=10.0)
    assert ok is True
    wait_for(lambda: "has waited over 1 s on the worker's event" in s.log(), 15.0, what="the stuck warning")
    dst = list(range(cache.nb - 2 * bpc, cache.nb))
    _, ok = c.call("retrieve", key_of(toks, 0, 2 * CHUNK, "r2l"), 98, [dst], Event().handle, 0, timeout=10.0)
    assert ok is False, "a RETRIEVE with a chunk never queued answered true"
    try:
        assert s.stop(timeout=20.0) == 0
    finally:
        ev.complete()
        ev.close()


def test_a_failed_event_record_does_not_use_up_a_pool_event(gpu_lmcd, clients):  # noqa: F811
    """A reply's event comes from the registration's pool of 64, reused
    round-robin, which relies on an event being recorded again only 64
    records later, when its earlier reply is long done. A record that fails
    (here: its handle cannot be had; the request goes unanswered) must not
    use up a slot: after 63 failures the next reply would otherwise carry
    the very event of a reply still pending, and the worker waiting on that
    earlier one would wait for the later record instead."""
    s = gpu_lmcd(env={"FAKECUDA_FAIL_EVENT_HANDLE": "2-64"})
    c = clients(s.url, timeout=30.0)
    cache = Cache("fa_nhd", "bf16", layers=1)
    register(c, 181, cache)
    bpc = CHUNK // cache.bs
    toks, dst = list(range(800, 800 + CHUNK)), list(range(1, 1 + bpc))
    ev, done = Event(), Event()
    ev.record()  # the first reply's record waits behind it
    try:
        h1, ok1 = c.call("retrieve", key_of(toks, 0, CHUNK, "p0"), 181, [dst], ev.handle, 0, timeout=10.0)
        assert ok1 is False and not event_done(h1)  # a miss: an event-only reply, pending
        for i in range(1, 64):  # calls 2 to 64 of cuIpcGetEventHandle fail: no reply
            c.submit("retrieve", key_of(toks, 0, CHUNK, f"p{i}"), 181, [dst], done.handle, 0)
        failed = "cuIpcGetEventHandle: CUDA error: FAKECUDA_FAIL_EVENT_HANDLE"
        wait_for(lambda: sum(failed in ln for ln in fake_errors(s)) == 63, 30.0, what="63 failed records")
        h65, ok65 = c.call("retrieve", key_of(toks, 0, CHUNK, "p64"), 181, [dst], done.handle, 0, timeout=10.0)
        assert ok65 is False
        assert h65 != h1, "a reply carries the event of an earlier reply still pending"
    finally:
        ev.complete()
    wait_reply_event(s, h1)
    wait_reply_event(s, h65)
    assert s.stop() == 0
    assert "fakecuda: leak" not in s.log(), s.log()
    ev.close()
    done.close()
