"""Read tensors from a legacy (pre-zip) PyTorch checkpoint without torch.

Used at model build time and by the weight tests. The legacy format is a run of pickles: a magic
number, a protocol version, system info, the object itself (tensors refer to storages by key via
persistent ids), the list of storage keys, then each storage's raw bytes prefixed by its element
count. The unpickler below only accepts the handful of globals such a file needs, so a hostile
checkpoint cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# torch storage class name -> numpy dtype
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """The file is not a legacy torch checkpoint this reader understands."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _PendingTensor:
    """A tensor whose storage bytes come later in the file."""

    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: str, offset: int, size: tuple, stride: tuple, *_: Any) -> Any:
    return _PendingTensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: BinaryIO, storages: dict[str, tuple[_StorageType, int]]) -> None:
        super().__init__(fh)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(f"checkpoint refers to {module}.{name}, which is not allowed")

    def persistent_load(self, pid: Any) -> str:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchFileError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        self._storages[str(key)] = (storage_type, int(numel))
        return str(key)


def _resolve(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, _PendingTensor):
        base = arrays[obj.key]
        item = base.itemsize
        count = int(np.prod(obj.size)) if obj.size else 1
        if count == 0:
            return np.zeros(obj.size, base.dtype)
        view = np.lib.stride_tricks.as_strided(
            base[obj.offset :],
            shape=obj.size,
            strides=tuple(s * item for s in obj.stride),
            writeable=False,
        )
        return np.array(view, copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, arrays)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_resolve(v, arrays) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, arrays) for v in obj)
    return obj


def load_legacy(path: Path) -> Any:
    """The object saved in a legacy torch file, with tensors as numpy arrays."""
    with open(path, "rb") as fh:
        try:
            magic = pickle.load(fh)
            if magic != LEGACY_MAGIC:
                raise TorchFileError(f"{path}: not a legacy torch file (bad magic number)")
            pickle.load(fh)  # protocol version
            sys_info = pickle.load(fh)
            if not sys_info.get("little_endian", True):
                raise TorchFileError(f"{path}: big-endian checkpoints are not supported")
            storages: dict[str, tuple[_StorageType, int]] = {}
            obj = _Unpickler(fh, storages).load()
            keys = pickle.load(fh)
        except (pickle.UnpicklingError, EOFError, AttributeError) as exc:
            raise TorchFileError(f"{path}: not a readable legacy torch file ({exc})") from exc
        arrays: dict[str, np.ndarray] = {}
        for key in keys:
            storage_type, numel = storages[str(key)]
            dtype = _STORAGE_DTYPES[storage_type.name]
            (count,) = struct.unpack("<q", fh.read(8))
            if count != numel:
                raise TorchFileError(f"{path}: storage {key} has {count} items, expected {numel}")
            raw = fh.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise TorchFileError(f"{path}: truncated storage {key}")
            arrays[str(key)] = np.frombuffer(raw, dtype=dtype)
    return _resolve(obj, arrays)
