#!/usr/bin/python3
"""Prints the hex of a pickled stand-in LMCache device IPC wrapper, for
tests/unit/test_pickle.c. Usage: test_pickle_gen.py PROTOCOL VARIANT
VARIANT: cuda | raw | device | big | recurring | evil.
The classes and the fake `torch` dtype globals are built on the fly so the
pickle holds the same globals the real objects produce (STACK_GLOBAL
"lmcache...custom_types" "CudaIPCWrapper", "torch" "bfloat16")."""
import pickle
import sys
import types


def module(name):
    """Registers `name` and its parent packages in sys.modules."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        sub = ".".join(parts[:k])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
            if k > 1:
                setattr(sys.modules[".".join(parts[:k - 1])], parts[k - 1], sys.modules[sub])
    return sys.modules[name]


torch = module("torch")


class _DType:
    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return self.name


_DType.__module__ = "torch"
for n in ("bfloat16", "float16", "uint8"):
    setattr(torch, n, _DType(n))

ct = module("lmcache.v1.multiprocess.custom_types")
dev = module("lmcache.v1.platform.base.ipc_wrapper")


def make_class(mod, name):
    cls = type(name, (), {})
    cls.__module__ = mod.__name__
    cls.__qualname__ = name
    setattr(mod, name, cls)
    return cls


CudaIPCWrapper = make_class(ct, "CudaIPCWrapper")
RawCudaIPCWrapper = make_class(ct, "RawCudaIPCWrapper")
DeviceIPCWrapper = make_class(dev, "DeviceIPCWrapper")


def fill(obj, handle, big=False):
    obj.handle = handle
    obj.dtype = torch.bfloat16 if not big else torch.uint8
    obj.shape = (2, 1000, 16, 8, 128) if not big else (4096,)
    obj.stride = (16384000, 16384, 1024, 128, 1) if not big else (1,)
    obj.storage_offset = 0 if not big else 3000000000
    obj.device_uuid = "8f0e2b1c-1d2e-4f5a-9b6c-7d8e9fa0b1c2"
    return obj


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


proto, variant = int(sys.argv[1]), sys.argv[2]
storage = bytes([2, 0]) + bytes(range(64))           # 66-byte handle
event = bytes(range(100, 164))
handle = (1, storage, 2 ** 33 if variant == "big" else 65536000, 4096,
          b"/torch_ref_1", 0, event, True)
if variant == "raw":
    o = fill(RawCudaIPCWrapper(), None)
    o._ipc_handle_reserved = bytes(range(64))
    o._nbytes = 123456
elif variant == "device":
    o = fill(DeviceIPCWrapper(), handle)
elif variant == "big":
    o = fill(CudaIPCWrapper(), handle, big=True)
elif variant == "recurring":
    o = fill(CudaIPCWrapper(), handle)
    o.stride = o.shape                               # same tuple twice: memo GET
elif variant == "evil":
    o = fill(CudaIPCWrapper(), handle)
    o.extra = _Evil()                                # REDUCE of builtins.print
else:
    o = fill(CudaIPCWrapper(), handle)
sys.stdout.write(pickle.dumps(o, protocol=proto).hex())
