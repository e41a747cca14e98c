#!/usr/bin/python3
"""Writes the request seed corpus (tests/fuzz/corpus/request/) in the driver's
input format: profile byte, then length-prefixed frames (see fuzz_request.c).
Run with Debian's /usr/bin/python3 (python3-msgpack)."""
import os
import sys

import msgpack

P = msgpack.packb
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "request")


def key(worker=0, salt=True, newest=False, tokens=(1, 2, 300, 70000)):
    k = {"model_name": "m", "world_size": 1, "worker_id": worker, "token_ids": list(tokens),
         "start": 0, "end": 4, "request_id": "r"}
    if salt:
        k["cache_salt"] = ""
    if newest:
        k.update(request_configs=None, num_kv_readers=1, null_chunk_mask=None)
    return k


ED = {"instance_id": 7, "model_name": "m", "world_size": 1, "block_size": 16, "num_layers": 2,
      "hidden_dim_size": 64, "dtype_str": "bfloat16", "use_mla": False, "num_physical_slots": 256,
      "engine_group_infos": [], "group_hidden_dim_sizes": None, "group_layout_descs": None,
      "enable_l1_kvweave_quant": False}
EXT = msgpack.ExtType(1, b"\x80\x04\x95" + b"x" * 20)
EV = b"\x00" * 64
# long enough for the validator to decode it in its walk (MP_CAP_MIN in src/wire/mp.h), every form
LONG = [(k * 2654435761) % (1 << (7, 8, 16, 32)[k % 4]) for k in range(80)]

seeds = {
    # 2604 (profile byte 0)
    "2604_register": (0, 1, [7, [EXT, EXT], "m", 1, {"kv_layout": "NHD"}]),
    "2604_register6": (0, 1, [7, [EXT], "m", 1, "vllm", {}]),
    "2604_store": (0, 3, [key(), 7, [1, 2], EV]),
    "2604_retrieve": (0, 4, [key(), 7, [[1, 2]], EV, 16]),
    "2604_lookup": (0, 5, [key(None), 1]),
    "2604_query": (0, 6, ["r"]),
    "2604_free": (0, 8, [key(None, salt=False), 2]),
    "2604_end": (0, 9, ["r"]),
    "2604_clear": (0, 10, []),
    "2604_chunk": (0, 11, []),
    "2604_ping": (0, 12, []),
    "2604_report1": (0, 13, [[{"req_id": "r", "new_block_ids": [7], "new_token_ids": [1, 2]}]]),
    "2604_report3": (0, 13, [1, "m", []]),
    "2604_noop": (0, 14, []),
    "2604_cb": (0, 17, [1]),
    # 2609 (profile byte 1)
    "2609_register": (1, 1, [7, [EXT], "m", 1, "vllm", {}, [{"engine_group_id": 0}]]),
    "2609_store": (1, 6, [key(0, newest=True), 7, [[1, 2], [3, 4]], EV]),
    "2609_retrieve": (1, 7, [key(1, newest=True), 7, [[1]], EV, 0]),
    "2609_wait": (1, 10, ["r", 5.0]),
    "2609_end2": (1, 13, ["r", {"reason": 1}]),
    "2609_ed": (1, 14, [ED]),
    "2609_prepare_store": (1, 16, [key(0, newest=True), 7]),
    "2609_commit_store": (1, 17, [key(0), 7, b""]),
    "2609_prepare_retrieve": (1, 18, [key(0), 7]),
    "2609_clear_force": (1, 20, [True]),
    "2609_ping": (1, 22, [None]),
    "2609_report": (1, 23, [1, "m", []]),
    "2609_experimental": (1, 32, []),
    "2609_name_lookup": (1, "lookup", [key(None), 1]),
    "2604_lookup_long": (0, 5, [key(None, tokens=LONG), 1]),
    "2609_msg_lookup_long": (1, 8, [{"key": key(None, tokens=LONG), "tp_size": 1}]),
    "2609_msg_store": (1, 6, [{"key": key(0), "instance_id": 7, "gpu_block_ids": [[1]],
                               "event_ipc_handle": EV}]),
    "2609_msg_chunk": (1, 21, [{}]),
    "2609_msg_ping": (1, 22, [{"instance_id": None}]),
    "2609_msg_wait": (1, 10, [{"request_id": "r", "timeout": 1}]),
    "2609_store_inline": (1, "lmcd.store_inline", [key(0), b"chunk0", b"chunk1"]),
    "2609_retrieve_inline": (1, "lmcd.retrieve_inline", [key(0)]),
    "2609_p2p": (1, 29, []),
}


# Replies a client decodes: (profile | 2 | form << 2 | op << 3, type, response frames).
# op numbers are enum wire_op positions (wire.h).
OP = {"store": 3, "query": 6, "chunk": 12, "ping": 13, "ed_register": 16, "prepare_store": 18,
      "prepare_retrieve": 20, "experimental": 22, "retrieve_inline": 24}
SLOT = {"offset": 0, "length": 4194304, "shape": [2, 4, 256, 1024], "dtype": "bfloat16"}
replies = {
    "reply_store": (0, OP["store"], 3, [[EV, True]]),
    "reply_query_nil": (0, OP["query"], 6, []),
    "reply_chunk_msg": (1 | 4, OP["chunk"], 21, [{"chunk_size": 256}]),
    "reply_ping": (1, OP["ping"], 22, [True]),
    "reply_pool": (1, OP["ed_register"], 14, [{"shm_name": "p", "pool_size": 1 << 30, "error": None}]),
    "reply_prepare_store": (1, OP["prepare_store"], 16,
                            [{"context": {"slots": [SLOT, SLOT], "chunk_indices": [0, 1]}}]),
    "reply_prepare_retrieve": (1, OP["prepare_retrieve"], 18,
                               [{"success": True, "data": b"", "context": {"slots": [SLOT]}}]),
    "reply_experimental": (1, OP["experimental"], 32, [["a", "b"]]),
    "reply_store_msg": (1 | 4, OP["store"], 6, [{"result": {"event_ipc_handle": EV, "success": True}}]),
}


def frame(b):
    if len(b) < 255:
        return bytes([len(b)]) + b
    return bytes([255, len(b) >> 8, len(b) & 255]) + b


os.makedirs(OUT, exist_ok=True)
for name, (prof, typ, payload) in seeds.items():
    frames = [P(200), P(typ)]
    for k, v in enumerate(payload):
        raw = name.endswith("store_inline") and k > 0
        frames.append(v if raw else P(v, use_bin_type=True))
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes([prof]) + b"".join(frame(x) for x in frames))

for name, (mode, op, typ, payload) in replies.items():
    frames = [P(5), P(typ)] + [P(v, use_bin_type=True) for v in payload]
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes([mode | 2 | (op << 3)]) + b"".join(frame(x) for x in frames))
retrieve_inline = [P(5), P("lmcd.retrieve_inline"), P(2), b"chunk0", b"chunk1"]
with open(os.path.join(OUT, "reply_retrieve_inline"), "wb") as f:
    f.write(bytes([1 | 2 | (OP["retrieve_inline"] << 3)]) + b"".join(frame(x) for x in retrieve_inline))
