"""The small part of pyzmq that clients/python/lmcd_client.py uses, over
ctypes on the carried libzmq.so.5: the GPU host has no pyzmq (tests/gpu/run.sh).
Install with `sys.modules["zmq"] = ctzmq` before importing lmcd_client."""
import ctypes
import ctypes.util
import os

DEALER = 5
LINGER = 17
SNDHWM = 23
RCVHWM = 24
RCVMORE = 13
SNDMORE = 2
POLLIN = 1
EAGAIN = 11
EINTR = 4


def _loaded_names():
    try:
        with open("/proc/self/maps") as f:
            return {os.path.basename(line.split()[-1]) for line in f if "/" in line}
    except OSError:
        return set()


def _preload(libdir):
    """Loads the bundle's libraries (libzmq's dependencies) by path, leaves
    first, skipping any name this process already has (libffi, libstdc++):
    then libzmq resolves them without LD_LIBRARY_PATH in Python itself."""
    have = _loaded_names()
    todo = sorted(f for f in os.listdir(libdir) if ".so" in f and f not in have and not f.startswith("libzmq"))
    for _ in range(len(todo) + 1):
        left = []
        for f in todo:
            try:
                ctypes.CDLL(os.path.join(libdir, f), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                left.append(f)
        if not left or len(left) == len(todo):
            break
        todo = left


def _load():
    libdir = os.environ.get("LMCD_BUNDLE_LIB")
    if libdir and os.path.isdir(libdir):
        _preload(libdir)
        return ctypes.CDLL(os.path.join(libdir, "libzmq.so.5"), use_errno=True)
    here = os.environ.get("LMCD_ZMQ_LIB")
    names = [here] if here else []
    names += ["libzmq.so.5", ctypes.util.find_library("zmq") or "libzmq.so"]
    err = None
    for n in names:
        try:
            return ctypes.CDLL(n, use_errno=True)
        except OSError as e:
            err = e
    raise OSError(f"cannot load libzmq: {err}")


_z = _load()
_z.zmq_ctx_new.restype = ctypes.c_void_p
_z.zmq_ctx_term.argtypes = [ctypes.c_void_p]
_z.zmq_socket.restype = ctypes.c_void_p
_z.zmq_socket.argtypes = [ctypes.c_void_p, ctypes.c_int]
_z.zmq_close.argtypes = [ctypes.c_void_p]
_z.zmq_setsockopt.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_z.zmq_connect.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_z.zmq_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_z.zmq_errno.restype = ctypes.c_int
_z.zmq_strerror.restype = ctypes.c_char_p
_z.zmq_strerror.argtypes = [ctypes.c_int]


class _Msg(ctypes.Structure):
    _fields_ = [("_", ctypes.c_ubyte * 64)]


_z.zmq_msg_init.argtypes = [ctypes.POINTER(_Msg)]
_z.zmq_msg_recv.argtypes = [ctypes.POINTER(_Msg), ctypes.c_void_p, ctypes.c_int]
_z.zmq_msg_data.restype = ctypes.c_void_p
_z.zmq_msg_data.argtypes = [ctypes.POINTER(_Msg)]
_z.zmq_msg_size.restype = ctypes.c_size_t
_z.zmq_msg_size.argtypes = [ctypes.POINTER(_Msg)]
_z.zmq_msg_more.argtypes = [ctypes.POINTER(_Msg)]
_z.zmq_msg_close.argtypes = [ctypes.POINTER(_Msg)]


class _PollItem(ctypes.Structure):
    _fields_ = [("socket", ctypes.c_void_p), ("fd", ctypes.c_int), ("events", ctypes.c_short),
                ("revents", ctypes.c_short)]


_z.zmq_poll.argtypes = [ctypes.POINTER(_PollItem), ctypes.c_int, ctypes.c_long]


class ZMQError(Exception):
    pass


def _check(rc):
    if rc < 0:
        e = _z.zmq_errno()
        raise ZMQError(_z.zmq_strerror(e).decode())
    return rc


class Socket:
    def __init__(self, ctx, kind):
        self._s = _z.zmq_socket(ctx._c, kind)
        if not self._s:
            _check(-1)

    def setsockopt(self, opt, value):
        v = ctypes.c_int(value)
        _check(_z.zmq_setsockopt(self._s, opt, ctypes.byref(v), ctypes.sizeof(v)))

    def connect(self, url):
        _check(_z.zmq_connect(self._s, url.encode()))

    def send_multipart(self, frames, copy=True):
        frames = [bytes(f) for f in frames]
        for i, f in enumerate(frames):
            flags = SNDMORE if i + 1 < len(frames) else 0
            while _z.zmq_send(self._s, f, len(f), flags) < 0:
                if _z.zmq_errno() != EINTR:
                    _check(-1)

    def recv_multipart(self):
        out = []
        while True:
            m = _Msg()
            _z.zmq_msg_init(ctypes.byref(m))
            while _z.zmq_msg_recv(ctypes.byref(m), self._s, 0) < 0:
                if _z.zmq_errno() != EINTR:
                    _z.zmq_msg_close(ctypes.byref(m))
                    _check(-1)
            n = _z.zmq_msg_size(ctypes.byref(m))
            out.append(ctypes.string_at(_z.zmq_msg_data(ctypes.byref(m)), n) if n else b"")
            more = _z.zmq_msg_more(ctypes.byref(m))
            _z.zmq_msg_close(ctypes.byref(m))
            if not more:
                return out

    def poll(self, timeout=None, flags=POLLIN):
        p = Poller()
        p.register(self, flags)
        r = p.poll(timeout)
        return r[0][1] if r else 0

    def close(self, linger=None):
        if self._s:
            if linger is not None:
                self.setsockopt(LINGER, linger)
            _z.zmq_close(self._s)
            self._s = None


class Context:
    def __init__(self):
        self._c = _z.zmq_ctx_new()

    def socket(self, kind):
        return Socket(self, kind)

    def term(self):
        if self._c:
            _z.zmq_ctx_term(self._c)
            self._c = None


class Poller:
    def __init__(self):
        self._socks = []

    def register(self, sock, events=POLLIN):
        self._socks.append((sock, events))

    def poll(self, timeout=None):
        n = len(self._socks)
        items = (_PollItem * n)()
        for i, (s, ev) in enumerate(self._socks):
            items[i].socket = s._s
            items[i].events = ev
        t = -1 if timeout is None else int(timeout)
        rc = _z.zmq_poll(items, n, t)
        if rc < 0:
            if _z.zmq_errno() == EINTR:
                return []
            _check(rc)
        return [(self._socks[i][0], items[i].revents) for i in range(n) if items[i].revents]
