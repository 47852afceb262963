"""Fast safetensors loading: :func:`load_file`, :func:`load` and :func:`safe_open`.

Files are read by larder's Rust engine — parallel positioned reads of large chunks into one
buffer per file, or straight to a GPU (GPUDirect Storage, else page-locked buffers whose copies
overlap the reads) — and the tensors are handed over without a copy: torch tensors through
DLPack, or NumPy arrays that view larder's buffers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Union

from ._larder import ArgumentError, Checkpoint, cuda_probe_json

PathLike = Union[str, "os.PathLike[str]"]

# NumPy dtypes of the safetensors dtypes NumPy has; the others (bf16, fp8) stay in their
# storage type (uint16, uint8), and `TensorDict.dtypes` says what they are.
_NUMPY = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "U64": "uint64",
    "C64": "complex64",
}

# torch dtypes that travel through DLPack as bytes and are viewed back here.
_TORCH_VIEWS = {
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}


class TensorDict(dict):
    """A dict of tensors (name -> tensor or array) that also says each one's safetensors dtype
    in ``dtypes`` — needed for NumPy arrays of dtypes NumPy lacks: ``"BF16"`` arrives as
    ``uint16`` and ``"F8_E4M3"`` / ``"F8_E5M2"`` as ``uint8`` (view them in torch with
    ``torch.from_numpy(a).view(torch.bfloat16)``)."""

    dtypes: Dict[str, str]


class Loaded(NamedTuple):
    """What :func:`load` returns: the tensors, and how they were read."""

    tensors: TensorDict
    report: Dict[str, Any]
    """``path`` taken ("plain", "direct", "pinned" or "cufile"), ``fallbacks`` (why each faster
    path was not taken), ``bytes`` and ``seconds``."""


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _framework(framework: Optional[str]) -> str:
    if framework is None:
        return "pt" if _torch() is not None else "numpy"
    if framework in ("pt", "torch"):
        if _torch() is None:
            raise ArgumentError("framework='pt' needs torch, which is not importable")
        return "pt"
    if framework in ("np", "numpy"):
        return "numpy"
    raise ArgumentError(f"framework must be 'pt' or 'numpy', not {framework!r}")


def _device(device: Any) -> Optional[int]:
    """None for the CPU, else the CUDA ordinal."""
    if isinstance(device, int):
        return device
    text = str(device)
    if text == "cpu":
        return None
    if text == "cuda":
        # As torch reads it: the current device (each rank's own under torchrun).
        try:
            import torch

            return torch.cuda.current_device() if torch.cuda.is_available() else 0
        except ImportError:
            return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise ArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")


def _convert(raw: Any, dtype: str, framework: str, cast: Any) -> Any:
    """A capsule or storage-typed array, viewed as its dtype and cast as asked."""
    if framework == "pt":
        torch = _torch()
        t = torch.from_dlpack(raw)
        if dtype in _TORCH_VIEWS:
            t = t.view(getattr(torch, _TORCH_VIEWS[dtype]))
        if cast is not None and t.is_floating_point():
            t = t.to(cast)
        return t
    import numpy as np

    if dtype in _NUMPY:
        raw = raw.view(_NUMPY[dtype])
    if cast is not None and raw.dtype.kind == "f":
        raw = raw.astype(np.dtype(cast))
    return raw


def _torch_dtype(dtype: Any) -> Any:
    if dtype is None or not isinstance(dtype, str):
        return dtype
    torch = _torch()
    found = getattr(torch, dtype, None)
    if not isinstance(found, torch.dtype):
        raise ArgumentError(f"unknown torch dtype {dtype!r}")
    return found


def load(
    path: PathLike,
    device: Any = "cpu",
    dtype: Any = None,
    *,
    framework: Optional[str] = None,
    direct: Optional[bool] = None,
    pinned: bool = False,
    method: Optional[str] = None,
    threads: int = 8,
    chunk_mib: int = 16,
) -> Loaded:
    """Loads every tensor of a safetensors file or sharded checkpoint; see :func:`load_file`.

    Returns:
        Loaded: ``(tensors, report)``; ``report["path"]`` is the path taken and
        ``report["fallbacks"]`` why each faster one was not.
    """
    framework = _framework(framework)
    ordinal = _device(device)
    native = Checkpoint.open(os.fspath(path))
    as_dlpack = framework == "pt"
    if ordinal is None:
        raw, report = native.load(as_dlpack, threads=threads, chunk_mib=chunk_mib, direct=direct, pinned=pinned)
    else:
        if framework != "pt":
            raise ArgumentError("device='cuda' needs torch (GPU tensors are handed over as torch tensors)")
        raw, report = native.load_to(ordinal, threads=threads, chunk_mib=chunk_mib, direct=direct, only=method)
    cast = _torch_dtype(dtype) if framework == "pt" else dtype
    out = TensorDict()
    out.dtypes = {}
    for name, value in raw.items():
        kind = native.info(name)[0]
        out.dtypes[name] = kind
        out[name] = _convert(value, kind, framework, cast)
    return Loaded(out, json.loads(report))


def load_file(
    path: PathLike,
    device: Any = "cpu",
    dtype: Any = None,
    *,
    framework: Optional[str] = None,
    direct: Optional[bool] = None,
    pinned: bool = False,
    method: Optional[str] = None,
    threads: int = 8,
    chunk_mib: int = 16,
) -> TensorDict:
    """Loads every tensor of a safetensors file (or a sharded checkpoint's ``.index.json``),
    like ``safetensors.torch.load_file`` but with parallel reads and no extra copy.

    Args:
        path: A ``.safetensors`` file, or the ``.json`` index of a sharded checkpoint.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. To a GPU, larder uses GPUDirect Storage
            when the machine supports it, else page-locked buffers with overlapped copies, else
            plain copies (see ``larder.cuda_probe()`` for why a path is unavailable).
        dtype: Cast floating-point tensors to this dtype (a torch dtype or its name, or a
            NumPy dtype); None keeps the stored dtypes.
        framework: ``"pt"`` (torch tensors) or ``"numpy"``; default torch when importable.
        direct: ``True`` reads with ``O_DIRECT`` (bypassing the page cache), ``False`` through
            the page cache; ``None`` (default) uses ``O_DIRECT`` for files of 64 MiB or more that
            are mostly not cached. Pass ``False`` when several processes load the same file at
            once (ranks under torchrun): the page cache then reads it from the drive only once.
        pinned: Page-locked host buffers (CPU loads), for fast copies to a GPU later; ordinary
            memory, with a warning, without CUDA.
        method: GPU loads: use only this path (``"cufile"``, ``"pinned"`` or ``"plain"``) and
            fail rather than fall back.
        threads: Reads in flight.
        chunk_mib: Size of each read, in MiB.

    Returns:
        TensorDict: name -> tensor (or NumPy array); ``.dtypes`` gives each safetensors dtype.

    Example:
        >>> weights = larder.load_file("model.safetensors", device="cuda:0")
        >>> model.load_state_dict(weights)
    """
    return load(
        path,
        device,
        dtype,
        framework=framework,
        direct=direct,
        pinned=pinned,
        method=method,
        threads=threads,
        chunk_mib=chunk_mib,
    ).tensors


class safe_open:
    """Lazy access to a safetensors file or sharded checkpoint, as ``safetensors.safe_open``:
    opening reads only the headers; ``get_tensor`` reads one tensor's bytes.

    Args:
        path: A ``.safetensors`` file or a sharded checkpoint's ``.json`` index.
        framework: ``"pt"`` or ``"numpy"`` (default torch when importable).
        device: Where ``get_tensor`` puts tensors (``"cpu"`` or ``"cuda:N"``, torch only; a
            tensor read on its own goes to the GPU through host memory).

    Example:
        >>> with larder.safe_open("model.safetensors", framework="pt") as f:
        ...     emb = f.get_tensor("embed.weight")
    """

    def __init__(self, path: PathLike, framework: Optional[str] = None, device: Any = "cpu"):
        self._framework = _framework(framework)
        ordinal = _device(device)
        if ordinal is not None and self._framework != "pt":
            raise ArgumentError("device='cuda' needs framework='pt'")
        self._device = None if ordinal is None else f"cuda:{ordinal}"
        self._native = Checkpoint.open(os.fspath(path))

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def keys(self) -> List[str]:
        """Tensor names, sorted."""
        return self._native.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def metadata(self) -> Dict[str, str]:
        """The file's ``__metadata__`` (or the index's ``metadata``)."""
        return self._native.metadata()

    def dtype(self, name: str) -> str:
        """The safetensors dtype of ``name`` (e.g. ``"BF16"``)."""
        return self._native.info(name)[0]

    def shape(self, name: str) -> List[int]:
        """The shape of ``name``."""
        return self._native.info(name)[1]

    def get_tensor(self, name: str) -> Any:
        """Reads tensor ``name`` (its bytes alone)."""
        kind = self.dtype(name)
        value = _convert(self._native.read(name, self._framework == "pt"), kind, self._framework, None)
        if self._device is not None:
            value = value.to(self._device)
        return value


def cuda_probe(path: Optional[PathLike] = None) -> Dict[str, Any]:
    """The CUDA driver, the GPUs and every GPUDirect Storage requirement, with the reason each
    faster load path is unavailable (``unavailable``). With ``path``, also whether GDS can
    read that file's file system."""
    return json.loads(cuda_probe_json(None if path is None else os.fspath(path)))
