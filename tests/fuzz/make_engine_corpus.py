#!/usr/bin/python3
"""Writes the engine fuzzer's seed corpus (tests/fuzz/corpus/engine/): short
server sessions in fuzz_engine.c's input format (flags byte, then commands;
a request is 0x00, a frame count byte, then length-prefixed frames).
Run with Debian's /usr/bin/python3 (python3-msgpack)."""
import os
import sys

import msgpack

P = msgpack.packb
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "engine")
TOKS = list(range(100, 148))  # 48 tokens: 3 chunks of 16


def key(worker=0, start=0, end=48, rid="r", toks=TOKS, salt=""):
    return {"model_name": "m", "world_size": 1, "worker_id": worker, "token_ids": toks, "start": start,
            "end": end, "request_id": rid, "cache_salt": salt}


ED = {"instance_id": 7, "model_name": "m", "world_size": 1, "block_size": 16, "num_layers": 2,
      "hidden_dim_size": 64, "dtype_str": "bfloat16", "use_mla": False, "num_physical_slots": 256,
      "engine_group_infos": [], "group_hidden_dim_sizes": None, "group_layout_descs": None,
      "enable_l1_kvweave_quant": False}


def frame(b):
    if len(b) < 255:
        return bytes([len(b)]) + b
    return bytes([255, len(b) >> 8, len(b) & 255]) + b


class Seq:
    def __init__(self, profile):
        self.out = bytearray([1 if profile == 2609 else 0])
        self.uid = 0

    def req(self, tid, *payload, raw=()):
        frames = [P(self.uid), P(tid)] + [P(x) for x in payload] + list(raw)
        self.uid += 1
        self.out += bytes([0, len(frames) - 1])
        for f in frames:
            self.out += frame(f)
        return self

    def advance(self, s):
        self.out += bytes([1, s])
        return self

    def release(self):
        self.out += bytes([2])
        return self

    def evict(self):
        self.out += bytes([3])
        return self


def write(name, seq):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes(seq.out))


os.makedirs(OUT, exist_ok=True)
chunks = [bytes([i]) * 200 for i in range(3)]

write("2609_engine_driven", Seq(2609)
      .req(14, ED).req(16, key(), 7).req(17, key(), 7, b"").req(8, key(None), 1).req(9, "r")
      .req(11, "r").req(18, key(), 7).advance(6).req(19, key(), 7).req(12, key(None), 1)
      .req(13, "r").req(10, "r", 0.0).advance(70).evict().req(15, 7))
write("2609_inline_slow_reader", Seq(2609)
      .req("lmcd.store_inline", key(), raw=chunks).req("lmcd.retrieve_inline", key())
      .req("lmcd.retrieve_inline", key(rid="s")).advance(10).req(20, True)
      .req("lmcd.store_inline", key(toks=list(range(500, 548))), raw=[b"\xee" * 300] * 3)
      .evict().release().req(20, False).release().req(21).req(24))
# a reply held past the read TTL while new objects fill L1 (issue 11 item 2)
held = Seq(2609).req("lmcd.store_inline", key(), raw=[bytes([i]) * 16 for i in range(3)])
held.req("lmcd.retrieve_inline", key()).advance(10)
for k in range(25):
    held.req("lmcd.store_inline", key(toks=list(range(k * 48, k * 48 + 48)), rid=f"f{k}"), raw=[b"\xee" * 16] * 3)
write("2609_held_past_ttl_under_pressure", held.evict().release())
write("2609_pressure", Seq(2609)
      .req(14, ED)
      .req(16, key(), 7).req(16, key(toks=list(range(200, 248))), 7).advance(11).req(17, key(), 7, b"")
      .req("lmcd.retrieve_inline", key()).req(18, key(), 7).req(20, True).req(19, key(), 7)
      .release().evict().req(22, None).req(23, 7, "m", []))
write("2604_session", Seq(2604)
      .req(5, key(None), 1).req(6, "r").req(7, "r").req(8, key(None), 2).req(9, "r").req(10)
      .req(11).req(12).req(14).advance(200).evict().req(13, [{"req_id": "r", "new_block_ids": [1],
                                                              "new_token_ids": [1]}]))
