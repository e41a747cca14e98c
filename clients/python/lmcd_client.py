"""A small Python client for lmcd (and any LMCache MP server).

Speaks both wire profiles the way LMCache's own Python clients do:

* one ZeroMQ DEALER per Client, frames ``[uid, type, payload...]``;
* ``uid`` is msgpack int counting from 0 per Client; ``type`` is the
  profile's integer id, or (2609) the operation name for ops without one;
* positional form: one msgpack document per argument; a "None" reply has no
  response frame;
* 2609 single-map message form (``form="message"``): one map frame with the
  request fields, every reply is a map, None is ``{}``.

Replies are matched by uid, so several requests can be in flight
(``submit``/``wait``). Every call is bounded by a timeout and raises
``TimeoutError`` when it expires. Only Debian's python3-zmq and
python3-msgpack are needed (run with /usr/bin/python3).

A Client is not thread-safe: give each thread its own.
"""
import json
import mmap
import os
import time
import urllib.request

import msgpack
import zmq

PROFILES = ("lmcache-2604", "lmcache-2609")
ERROR_MARKER = b"LMCACHE_RPC_ERROR_V1"

# Canonical operation name -> integer id, per profile (spec 3.1 and 4.1).
OPS_2604 = {
    "register_kv_cache": 1,
    "unregister_kv_cache": 2,
    "store": 3,
    "retrieve": 4,
    "lookup": 5,
    "query_prefetch_status": 6,
    "query_prefetch_lookup_hits": 7,
    "free_lookup_locks": 8,
    "end_session": 9,
    "clear": 10,
    "get_chunk_size": 11,
    "ping": 12,
    "report_block_allocation": 13,
    "noop": 14,
    # CacheBlend ids: recognised by lmcd, never served
    "cb_register_kv_cache": 15,
    "cb_unregister_kv_cache": 16,
    "cb_store_pre_computed": 17,
    "cb_lookup_pre_computed": 18,
    "cb_retrieve_pre_computed": 19,
    "cb_store_final": 20,
    "cb_lookup_pre_computed_v2": 21,
    "cb_retrieve_pre_computed_v2": 22,
}

OPS_2609 = {
    "register_kv_cache": 1,
    "unregister_kv_cache": 2,
    "register_q_cache": 3,
    "unregister_q_cache": 4,
    "store_q": 5,
    "store": 6,
    "retrieve": 7,
    "lookup": 8,
    "query_prefetch_status": 9,
    "wait_prefetch_status": 10,
    "query_prefetch_lookup_hits": 11,
    "free_lookup_locks": 12,
    "end_session": 13,
    "register_kv_cache_engine_driven_context": 14,
    "unregister_kv_cache_engine_driven_context": 15,
    "prepare_store": 16,
    "commit_store": 17,
    "prepare_retrieve": 18,
    "commit_retrieve": 19,
    "clear": 20,
    "get_chunk_size": 21,
    "ping": 22,
    "report_block_allocation": 23,
    "noop": 24,
    "cb_register_rope": 25,
    "cb_unregister_rope": 26,
    "cb_retrieve_pre_computed": 27,
    "cb_unified_lookup": 28,
    "p2p_lookup_and_lock": 29,
    "p2p_query_lookup_results": 30,
    "p2p_unlock_objects": 31,
    "get_experimental": 32,
    "cb_protocol_handshake": 33,
    "poll_kv_events": 34,
    # no integer id: sent as the name
    "subscribe_kv_events": None,
    "lmcd.store_inline": None,
    "lmcd.retrieve_inline": None,
}

# Message form (spec 4.4): request field names, in declaration order, for
# each op; the positional arguments of request() are zipped with them.
MESSAGE_FIELDS = {
    "register_kv_cache": ("instance_id", "kv_cache", "model_name", "world_size", "engine_type",
                          "layout_hints", "engine_group_infos"),
    "unregister_kv_cache": ("instance_id",),
    "unregister_kv_cache_engine_driven_context": ("instance_id",),
    "store": ("key", "instance_id", "gpu_block_ids", "event_ipc_handle"),
    "retrieve": ("key", "instance_id", "gpu_block_ids", "event_ipc_handle", "skip_first_n_tokens"),
    "lookup": ("key", "tp_size"),
    "free_lookup_locks": ("key", "tp_size"),
    "query_prefetch_status": ("request_id",),
    "query_prefetch_lookup_hits": ("request_id",),
    "wait_prefetch_status": ("request_id", "timeout"),
    "end_session": ("request_id",),
    "prepare_store": ("key", "instance_id"),
    "commit_store": ("key", "instance_id", "data"),
    "prepare_retrieve": ("key", "instance_id"),
    "commit_retrieve": ("key", "instance_id"),
    "clear": (),
    "noop": (),
    "get_chunk_size": (),
    "get_experimental": (),
    "ping": ("instance_id",),
    "report_block_allocation": ("instance_id", "model_name", "records"),
    "cb_protocol_handshake": ("client_version",),
}

# Message form: the reply map's single field that carries the value.
MESSAGE_RESULT = {
    "get_chunk_size": "chunk_size",
    "noop": "message",
    "ping": "ok",
    "query_prefetch_status": "chunk_count",
    "wait_prefetch_status": "chunk_count",
    "query_prefetch_lookup_hits": "chunk_count",
    "commit_store": "success",
    "commit_retrieve": "success",
    "get_experimental": "names",
}


def http_json(base, path="/status", timeout=5.0):
    """GET base+path from lmcd's HTTP server, decoded as JSON."""
    with urllib.request.urlopen(base + path, timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


def http_text(base, path="/metrics", timeout=5.0):
    with urllib.request.urlopen(base + path, timeout=timeout) as r:
        return r.read().decode("utf-8")


class RpcError(Exception):
    """The server answered with an LMCACHE_RPC_ERROR_V1 error frame."""

    def __init__(self, error_type, message):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


def pack(obj):
    """msgpack as msgspec writes it: str as str, bytes as bin."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def make_key(model, token_ids, start, end, request_id, world_size=1, worker_id=None, cache_salt="",
             num_kv_readers=None):
    """The cache key map of spec 5.1 (8 fields; 11 when num_kv_readers is given,
    as the newest 2609 client sends it)."""
    key = {
        "model_name": model,
        "world_size": world_size,
        "worker_id": worker_id,
        "token_ids": list(token_ids),
        "start": start,
        "end": end,
        "request_id": request_id,
        "cache_salt": cache_salt,
    }
    if num_kv_readers is not None:
        key["request_configs"] = None
        key["num_kv_readers"] = num_kv_readers
        key["null_chunk_mask"] = None
    return key


def ed_payload(instance_id, model="m", world_size=1, block_size=16, num_layers=2, hidden_dim_size=16,
               dtype_str="bfloat16", use_mla=False, num_physical_slots=None, chunk_size=256):
    """A RegisterEngineDrivenContextPayload map (spec 7.1) as the newest 2609
    worker sends it (13 fields)."""
    return {
        "instance_id": instance_id,
        "model_name": model,
        "world_size": world_size,
        "block_size": block_size,
        "num_layers": num_layers,
        "hidden_dim_size": hidden_dim_size,
        "dtype_str": dtype_str,
        "use_mla": use_mla,
        "num_physical_slots": chunk_size if num_physical_slots is None else num_physical_slots,
        "engine_group_infos": [],
        "group_hidden_dim_sizes": None,
        "group_layout_descs": None,
        "enable_l1_kvweave_quant": False,
    }


class Client:
    """One DEALER connected to `url`, speaking `profile` in `form`."""

    def __init__(self, url, profile="lmcache-2609", form="positional", timeout=5.0, ctx=None):
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}")
        if form not in ("positional", "message"):
            raise ValueError(f"unknown form {form!r}")
        if form == "message" and profile != "lmcache-2609":
            raise ValueError("the message form exists only in lmcache-2609")
        self.url = url
        self.profile = profile
        self.form = form
        self.timeout = timeout
        self.ops = OPS_2609 if profile == "lmcache-2609" else OPS_2604
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(url)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self._next_uid = 0
        self._pending = {}   # uid -> op name, for requests not yet answered
        self._replies = {}   # uid -> list of reply frames (after uid)
        self.stray = []      # replies whose uid matched nothing pending
        self.arrivals = []   # uids in the order their replies arrived

    # ------------------------------------------------------------ plumbing

    def close(self):
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        if self._own_ctx and self.ctx is not None:
            self.ctx.term()
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def type_frame(self, op):
        """The type frame bytes for op: its integer id, else its name."""
        if isinstance(op, int):
            return pack(op)
        if op not in self.ops:
            raise KeyError(f"{op!r} is not an operation of {self.profile}")
        tid = self.ops[op]
        return pack(tid if tid is not None else op)

    def send_raw(self, frames):
        """Sends the frames as one multipart message, unchanged (for bad-input
        tests). Returns the number of frames sent."""
        frames = [bytes(f) for f in frames]
        if not frames:
            return 0
        self.sock.send_multipart(frames, copy=True)
        return len(frames)

    def recv_raw(self, timeout=None):
        """Next multipart message as received (no matching), or TimeoutError."""
        t = self.timeout if timeout is None else timeout
        if not self.poller.poll(int(t * 1000)):
            raise TimeoutError(f"no message from {self.url} within {t}s")
        return self.sock.recv_multipart()

    def roundtrip_raw(self, frames, timeout=None):
        """send_raw(frames), then the next message received, unmatched
        (use on a client with nothing else in flight)."""
        self.send_raw(frames)
        return self.recv_raw(timeout)

    def _payload_frames(self, op, args):
        if self.form == "message" and op in MESSAGE_FIELDS and op != "register_kv_cache_engine_driven_context":
            names = MESSAGE_FIELDS[op]
            if len(args) > len(names):
                raise TypeError(f"{op} takes at most {len(names)} fields in message form")
            return [pack(dict(zip(names, args)))]
        return [pack(a) for a in args]

    def submit_frames(self, op, payload_frames, type_frame=None):
        """Sends [uid, type, *payload_frames] (payload already encoded);
        returns the uid to wait() on."""
        uid = self._next_uid
        self._next_uid += 1
        tf = type_frame if type_frame is not None else self.type_frame(op)
        self.sock.send_multipart([pack(uid), tf] + [bytes(f) for f in payload_frames], copy=True)
        self._pending[uid] = op
        return uid

    def submit(self, op, *args):
        """Sends op(*args) without waiting; returns its uid."""
        return self.submit_frames(op, self._payload_frames(op, args))

    def _pump(self, deadline):
        """Receives what is there (waiting until deadline for the first)."""
        t = max(0, deadline - time.monotonic())
        if not self.poller.poll(int(t * 1000)):
            return False
        while True:
            frames = self.sock.recv_multipart()
            self._store(frames)
            if not self.sock.poll(0, zmq.POLLIN):
                return True

    def _store(self, frames):
        try:
            uid = unpack(frames[0]) if frames else None
        except Exception:
            uid = None
        if isinstance(uid, int) and uid in self._pending:
            self._replies[uid] = frames[1:]
            self.arrivals.append(uid)
        else:
            self.stray.append(frames)

    def wait_frames(self, uid, timeout=None):
        """The raw reply frames after the uid ([type, response?, raw...])."""
        t = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        while uid not in self._replies:
            if uid not in self._pending:
                raise KeyError(f"uid {uid} was never submitted or already collected")
            if time.monotonic() >= deadline or not self._pump(deadline):
                if uid in self._replies:
                    break
                op = self._pending.pop(uid, "?")
                raise TimeoutError(f"no reply to uid {uid} ({op}) from {self.url} within {t}s")
        self._pending.pop(uid, None)
        return self._replies.pop(uid)

    def wait(self, uid, timeout=None):
        """The decoded reply of uid: None when there is no response frame;
        raises RpcError for an error frame, TimeoutError on timeout."""
        frames = self.wait_frames(uid, timeout)
        return self._decode(frames)

    @staticmethod
    def _decode(frames):
        if len(frames) < 2:
            return None
        if frames[1] == ERROR_MARKER:
            info = unpack(frames[2]) if len(frames) > 2 else {}
            raise RpcError(info.get("error_type"), info.get("message"))
        return unpack(frames[1])

    def request(self, op, *args, timeout=None):
        """op(*args), waited. Returns the decoded response frame as sent (in
        message form: the reply map), None when there is none."""
        return self.wait(self.submit(op, *args), timeout)

    def request_message(self, op, fields, timeout=None):
        """Sends `fields` as the one map frame of op (message form, or any
        op whose positional payload is one map) and returns the decoded reply."""
        return self.wait(self.submit_frames(op, [pack(fields)]), timeout)

    def _value(self, op, reply):
        """Unwraps a message-form reply map into the positional value."""
        if self.form != "message":
            return reply
        if op in MESSAGE_RESULT:
            return reply[MESSAGE_RESULT[op]]
        if op in ("store", "retrieve"):
            r = reply["result"]
            return [r["event_ipc_handle"], r["success"]]
        if reply == {}:
            return None
        return reply

    def call(self, op, *args, timeout=None):
        """op(*args), with message-form replies unwrapped to the positional value."""
        return self._value(op, self.request(op, *args, timeout=timeout))

    # ------------------------------------------------------------ typed helpers

    def get_chunk_size(self):
        return self.call("get_chunk_size")

    def noop(self):
        return self.call("noop")

    def ping(self, instance_id=None, *, send_arg=None):
        """2609 always sends the instance id frame (nil for the scheduler); 2604
        sends none unless an id is given. send_arg overrides that choice."""
        if send_arg is None:
            send_arg = self.profile == "lmcache-2609" or instance_id is not None
        return self.call("ping", instance_id) if send_arg else self.call("ping")

    def get_experimental(self):
        return self.call("get_experimental")

    def lookup(self, key, tp_size=1):
        return self.call("lookup", key, tp_size)

    def query_prefetch_status(self, rid):
        return self.call("query_prefetch_status", rid)

    def wait_prefetch_status(self, rid, timeout, rpc_timeout=None):
        bound = rpc_timeout if rpc_timeout is not None else max(self.timeout, float(timeout) + 2.0)
        return self.call("wait_prefetch_status", rid, timeout, timeout=bound)

    def query_prefetch_lookup_hits(self, rid):
        return self.call("query_prefetch_lookup_hits", rid)

    def poll_prefetch_status(self, rid, timeout=5.0, interval=0.005):
        """QUERY_PREFETCH_STATUS until it returns an int (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.query_prefetch_status(rid)
            if v is not None:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefetch status of {rid!r} still pending after {timeout}s")
            time.sleep(interval)

    def free_lookup_locks(self, key, tp_size=1):
        return self.call("free_lookup_locks", key, tp_size)

    def end_session(self, rid, end_info=None):
        if end_info is None:
            return self.call("end_session", rid)
        return self.call("end_session", rid, end_info)

    def clear(self, force=None):
        return self.call("clear") if force is None else self.call("clear", force)

    def report_block_allocation(self, instance_id, model, records):
        return self.call("report_block_allocation", instance_id, model, records)

    def register_ed(self, payload):
        """REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: {shm_name, pool_size, ...}."""
        return self.request("register_kv_cache_engine_driven_context", payload)

    def unregister_ed(self, instance_id):
        return self.call("unregister_kv_cache_engine_driven_context", instance_id)

    def unregister_kv_cache(self, instance_id):
        return self.call("unregister_kv_cache", instance_id)

    def prepare_store(self, key, instance_id):
        return self.call("prepare_store", key, instance_id)

    def commit_store(self, key, instance_id, data=b""):
        return self.call("commit_store", key, instance_id, data)

    def prepare_retrieve(self, key, instance_id):
        return self.call("prepare_retrieve", key, instance_id)

    def commit_retrieve(self, key, instance_id):
        return self.call("commit_retrieve", key, instance_id)

    def store_inline(self, key, chunks, timeout=None):
        """lmcd.store_inline: Key map then one raw frame per chunk of
        [start, end); returns the count of chunks now cached."""
        uid = self.submit_frames("lmcd.store_inline", [pack(key)] + [bytes(c) for c in chunks])
        return self.wait(uid, timeout)

    def retrieve_inline(self, key, timeout=None):
        """lmcd.retrieve_inline: the present prefix of [start, end) as raw chunks."""
        uid = self.submit_frames("lmcd.retrieve_inline", [pack(key)])
        frames = self.wait_frames(uid, timeout)
        n = self._decode(frames)
        chunks = [bytes(f) for f in frames[2:]]
        if n != len(chunks):
            raise ValueError(f"retrieve_inline announced {n} chunks but carried {len(chunks)}")
        return chunks


class Segment:
    """The L1 shared-memory segment a REGISTER_ED reply names, mapped
    read-write (as an engine-driven worker maps it). Never unlinks it."""

    def __init__(self, shm_name, size=None):
        name = shm_name.lstrip("/")
        self.path = os.path.join("/dev/shm", name)
        fd = os.open(self.path, os.O_RDWR)
        try:
            st = os.fstat(fd)
            self.size = st.st_size if size is None else size
            self.map = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def _check(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"[{offset}, {offset + length}) outside the {self.size}-byte segment")

    def read(self, offset, length):
        self._check(offset, length)
        return bytes(self.map[offset:offset + length])

    def write(self, offset, data):
        self._check(offset, len(data))
        self.map[offset:offset + len(data)] = data

    def close(self):
        if self.map is not None:
            self.map.close()
            self.map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
