"""Read PyTorch state dicts without PyTorch and without running pickled code.

``torch.save`` files are pickles, and unpickling an untrusted pickle can run any code.
:func:`read_pth` unpickles with a :class:`SafeUnpickler` that resolves only what a state
dict needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and its
parameter/legacy variants, and the ``torch.*Storage`` dtype markers), each replaced by
a numpy implementation here; anything else (``os.system``, ``builtins.eval``, ...) is
refused before it is called. Both layouts are read: the zip archive of PyTorch >= 1.6
(``archive/data.pkl`` + ``archive/data/<key>``) and the older single stream that
torchvision's 2017 files (AlexNet, SqueezeNet) use. :func:`read_safetensors` reads
``.safetensors`` files (a JSON header and raw little-endian buffers: no code at all).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from zoo.weights.keras_h5 import WeightFileError

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickleError(WeightFileError):
    """A pickle asked for something a state dict never needs; nothing of it was run."""


class _StorageType:
    """Stands for ``torch.FloatStorage`` & co.: only its dtype is used."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A typed buffer; a legacy *view* is a slice ``[offset, offset + numel)`` of ``root``."""

    def __init__(self, dtype: np.dtype, numel: int, root: _Storage | None = None,
                 offset: int = 0):
        self.dtype, self.numel, self.root, self.offset = dtype, numel, root, offset
        self.data: np.ndarray | None = None


class _Tensor:
    """A tensor waiting for its storage (legacy files store the data after the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        s = self.storage
        if not isinstance(s, _Storage) or s.data is None:
            raise WeightFileError("a tensor refers to a storage that is not in the file")
        ints = (self.offset, *self.size, *self.stride)
        if (not all(isinstance(v, int) and v >= 0 for v in ints)
                or len(self.size) != len(self.stride)):
            raise WeightFileError(f"bad tensor layout {self.size} / {self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, s.data.dtype)
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride, strict=True))
        if last >= s.data.size:  # as_strided must never read past the buffer
            raise WeightFileError(f"tensor of shape {self.size} runs past its storage")
        item = s.data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            s.data[self.offset:], shape=self.size, strides=[st * item for st in self.stride])
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_ignored):
    if not isinstance(data, _Tensor):
        raise WeightFileError("a parameter without tensor data")
    return data


def _ordered_dict(*args):
    if args:  # OrderedDict(items) is never pickled with arguments by torch
        raise WeightFileError("OrderedDict rebuilt with arguments")
    return collections.OrderedDict()


SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that knows only the globals of :data:`SAFE_GLOBALS`."""

    def __init__(self, file, storages: dict[str, _Storage], origin: str):
        super().__init__(file)
        self.storages, self.origin = storages, origin

    def find_class(self, module: str, name: str) -> Any:
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.origin}: refusing to unpickle {module}.{name}: a state dict needs "
                "only tensors, OrderedDict and plain containers, so this file may be "
                "malicious (nothing of it was run)"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ("storage", b"storage")
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[4], int)):
            raise UnsafePickleError(f"{self.origin}: unexpected persistent id {pid!r:.100}")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        root = self.storages.setdefault(key, _Storage(stype.dtype, numel))
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return root
        view_key, offset, view_numel = view  # legacy views: a slice of a root storage
        sub = _Storage(stype.dtype, int(view_numel), root=root, offset=int(offset))
        return self.storages.setdefault(f"view:{view_key}", sub)


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``torch.save``'d state dict -> ``{name: numpy array}``, without torch or code execution."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            obj = _read_zip(path)
        else:
            with open(path, "rb") as f:
                obj = _read_legacy(f, path)
    except WeightFileError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, ValueError,
            TypeError, struct.error, OSError, AttributeError, IndexError) as e:
        raise WeightFileError(
            f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e}); "
            "a truncated download gives this"
        ) from None
    return _state_dict(_materialise(obj), path)


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise WeightFileError(f"{path}: a zip file but not a torch.save archive")
        root = pkl[0].rsplit("/", 1)[0]
        order = "<"
        if f"{root}/byteorder" in names:
            order = ">" if z.read(f"{root}/byteorder").strip() == b"big" else "<"
        storages: dict[str, _Storage] = {}
        obj = SafeUnpickler(io.BytesIO(z.read(pkl[0])), storages, path).load()
        for key, s in storages.items():
            if key.startswith("view:"):
                raise WeightFileError(f"{path}: storage views in a zip archive")
            raw = z.read(f"{root}/data/{key}")
            s.data = _buffer(raw, s, order, f"{path}: storage {key}")
    return obj


def _read_legacy(f, path: str) -> Any:
    header = f.read(2)
    f.seek(0)
    if header[:1] != b"\x80":
        raise WeightFileError(f"{path}: neither a zip nor a pickle: not a PyTorch file")
    first = SafeUnpickler(f, {}, path)
    if first.load() != LEGACY_MAGIC:
        raise WeightFileError(f"{path}: a pickle but not a torch.save file (no magic number)")
    SafeUnpickler(f, {}, path).load()  # protocol version
    sys_info = SafeUnpickler(f, {}, path).load()
    order = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
    storages: dict[str, _Storage] = {}
    obj = SafeUnpickler(f, storages, path).load()
    keys = SafeUnpickler(f, {}, path).load()
    for key in keys:
        s = storages[str(key)]
        if s.root is not None:
            raise WeightFileError(f"{path}: storage {key} is both a view and a root")
        (numel,) = struct.unpack(order + "q", f.read(8))
        raw = f.read(numel * s.dtype.itemsize)
        s.numel = numel
        s.data = _buffer(raw, s, order, f"{path}: storage {key}")
    for view in storages.values():
        if view.root is not None and view.root.data is not None:
            view.data = view.root.data[view.offset:view.offset + view.numel]
    return obj


def _buffer(raw: bytes, s: _Storage, order: str, what: str) -> np.ndarray:
    if len(raw) != s.numel * s.dtype.itemsize:
        raise WeightFileError(f"{what}: {len(raw)} bytes, expected {s.numel * s.dtype.itemsize} "
                              "(truncated file?)")
    return np.frombuffer(raw, s.dtype.newbyteorder(order)).astype(s.dtype)


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
    """The state dict itself, also out of a ``{'state_dict': ...}`` checkpoint."""
    if isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return _state_dict(obj[key], path)
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file -> ``{name: numpy array}`` (no code is involved in this format)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        if n > len(data) - 8:
            raise ValueError(f"header of {n} bytes in a {len(data)}-byte file")
        header = json.loads(data[8:8 + n])
        body = memoryview(data)[8 + n:]
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(v) for v in info["data_offsets"])
            if not 0 <= start <= end <= len(body) or end - start != dtype.itemsize * int(
                    np.prod(shape)):
                raise ValueError(f"tensor {name!r}: bad data offsets {start}..{end}")
            out[name] = np.frombuffer(body[start:end], dtype.newbyteorder("<")).astype(
                dtype).reshape(shape)
    except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: not a readable .safetensors file ({e}); truncated?") \
            from None
    return out


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether a file looks like safetensors: an 8-byte header length, then ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1
