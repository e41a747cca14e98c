"""LMCache's CudaIPCWrapper as a vLLM worker pickles it (spec 10), shared by
the GPU run (tests/gpu/gpu_test.py, real PyTorch tensors) and the emulated
driver's e2e test (tests/e2e/test_gpu_emulated.py, no torch).

The class has LMCache's module path and the six state keys (handle, dtype,
shape, stride, storage_offset, device_uuid), so it pickles to the same
opcodes; `handle` is the 8-tuple of UntypedStorage._share_cuda_(). dtypes
pickle as the globals torch.<name>: the real ones when torch is importable,
else stand-ins registered as module "torch" that pickle identically.
"""
import pickle
import sys
import types


def module(name):
    """Registers `name` and its parent packages in sys.modules (as stand-ins)."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        sub = ".".join(parts[:k])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
            if k > 1:
                setattr(sys.modules[".".join(parts[:k - 1])], parts[k - 1], sys.modules[sub])
    return sys.modules[name]


_ct = module("lmcache.v1.multiprocess.custom_types")


class CudaIPCWrapper:
    """Same module/name and __dict__ as LMCache's: pickles identically."""

    def __init__(self, handle, dtype, shape, stride, storage_offset, device_uuid):
        self.handle = handle
        self.dtype = dtype
        self.shape = tuple(shape)
        self.stride = tuple(stride)
        self.storage_offset = storage_offset
        self.device_uuid = device_uuid


CudaIPCWrapper.__module__ = _ct.__name__
CudaIPCWrapper.__qualname__ = "CudaIPCWrapper"
_ct.CudaIPCWrapper = CudaIPCWrapper


class _DType:
    """A torch dtype stand-in: pickles as the global torch.<name>."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return self.name


_DType.__module__ = "torch"


def torch_dtype(name):
    """torch.<name>: the real dtype, or a stand-in. Once a stand-in module is
    registered, `import torch` finds it, so a second dtype must be added to
    it too (not looked up as if torch were real)."""
    try:
        import torch
    except ImportError:
        torch = module("torch")
        torch.__lmcd_stand_in__ = True
    if getattr(torch, "__lmcd_stand_in__", False) and not hasattr(torch, name):
        setattr(torch, name, _DType(name))
    return getattr(torch, name)


def share_handle(device_index, storage_handle, storage_size_bytes, storage_offset_bytes,
                 event_handle=bytes(64), event_sync_required=False):
    """The 8-tuple of UntypedStorage._share_cuda_() (ref counter left empty)."""
    return (device_index, storage_handle, storage_size_bytes, storage_offset_bytes, b"", 0, event_handle,
            event_sync_required)


def dumps(wrapper):
    return pickle.dumps(wrapper)
