"""larder: the data engine for diffusion-model fine-tuning.

Reads the ``datasets:`` YAML that AI Toolkit users already write, prepares a store of sharded
safetensors with a SQLite catalog, and serves it as batches from reader threads over one
memory-mapped copy of the data.

Example:
    >>> import larder
    >>> report = larder.prepare("examples/sample/config.yaml", "target/sample-store")
    >>> loader = larder.DataLoader("target/sample-store", batch_size=4, seed=0)
    >>> for batch in loader:
    ...     pixels = batch["pixels"]  # uint8, (B, 3, H, W), a view of Rust memory
    ...     captions = batch["captions"]
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from ._larder import (
    ArgumentError,
    Config,
    ConfigError,
    DecodeError,
    EncoderError,
    FileError,
    LarderError,
    MissingFileError,
    RemoteError,
    StoreError,
    TunerExhaustedError,
    __version__,
    load_config,
)
from ._larder import Loader as _Loader
from ._larder import Store as _Store
from ._larder import import_aitk_json as _import_aitk_json
from ._larder import merge_json as _merge_json
from ._larder import prepare_json as _prepare_json
from ._larder import pull_json as _pull_json
from ._larder import push_json as _push_json
from ._larder import scan_json as _scan_json
from .encoders import Encoder
from .fastload import cuda_probe, load_file, safe_open
from .metrics import Metrics
from .tuner import BatchSizeTuner

__all__ = [
    "ArgumentError",
    "BatchSizeTuner",
    "Config",
    "ConfigError",
    "DataLoader",
    "DecodeError",
    "Encoder",
    "EncoderError",
    "FileError",
    "LarderError",
    "Metrics",
    "MissingFileError",
    "RemoteError",
    "ScanReport",
    "Store",
    "StoreError",
    "TunerExhaustedError",
    "__version__",
    "cuda_probe",
    "import_aitk",
    "load_config",
    "load_file",
    "merge",
    "prepare",
    "pull",
    "push",
    "safe_open",
    "scan",
]

PathLike = Union[str, "os.PathLike[str]"]


class ScanReport:
    """The result of :func:`scan`: buckets, captions, findings and one record per item.

    Attributes:
        items_total: Planned items.
        buckets: ``[{"bucket": "WxH", "count": n, "share": f}, ...]``, largest first.
        findings: ``{kind: [{"path", "detail", ...}, ...]}``.
        items: One dict per planned item (path, size, bucket, resize, crop, flip, caption).
    """

    def __init__(self, document: Dict[str, Any]):
        self._doc = document
        self.items_total: int = document["items_total"]
        self.buckets: List[Dict[str, Any]] = document["buckets"]
        self.findings: Dict[str, List[Dict[str, Any]]] = document["findings"]
        self.items: List[Dict[str, Any]] = document["items"]

    def to_dict(self) -> Dict[str, Any]:
        """The whole report, as ``larder scan --json`` prints it."""
        return self._doc

    def __repr__(self) -> str:
        return f"ScanReport(items={self.items_total}, buckets={len(self.buckets)}, findings={sum(map(len, self.findings.values()))})"


def scan(config: Union[Config, PathLike]) -> ScanReport:
    """Scans a config's datasets and plans buckets, without decoding any image.

    Args:
        config: A :class:`Config` or a path (job file, ``datasets:`` file, or image folder).

    Returns:
        ScanReport: items per bucket, caption coverage, findings, one record per item.

    Raises:
        ConfigError: the config cannot be used.
    """
    return ScanReport(json.loads(_scan_json(_config_arg(config))))


def prepare(
    config: Union[Config, PathLike],
    out: PathLike,
    *,
    shard_bytes: int = 256 << 20,
    image_codec: str = "u8",
    progress: bool = False,
    image_encoders: Optional[Dict[str, Any]] = None,
    text_encoders: Optional[Dict[str, Any]] = None,
    clip_encoders: Optional[Dict[str, Any]] = None,
    encode_batch_size: int = 8,
    latent_codec: str = "bf16",
    text_codec: str = "bf16",
    caption_variants: int = 4,
    clip_size: int = 224,
    store_pixels: bool = True,
    shard: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """Prepares a config into a store: decode, resize, crop, encode and pack into shards.

    Running it again computes only what changed; an interrupted run resumes. Encoders are
    callables wrapped in :class:`Encoder` (see docs/encoders.md); each is called with the GIL
    held only for the call, while larder decodes the next batch.

    Args:
        config: A :class:`Config` or a path.
        out: The store folder to create or update, or a URL (``s3://``, ``gs://``,
            ``az://``): the store is then built in a local staging folder and uploaded as
            shards complete, the catalog last (see docs/remote.md).
        shard_bytes: Target shard size in bytes.
        image_codec: ``"u8"``, ``"u8+zstd"`` or ``"u8+lz4"``.
        progress: Show a progress bar when standard error is a terminal.
        image_encoders: ``{field: Encoder}`` run on each item's bucket crop (VAE latents).
        text_encoders: ``{field: Encoder}`` run once per distinct caption and variant.
        clip_encoders: ``{field: Encoder}`` run on each CLIP-preprocessed image (the item's,
            or its dataset's ``clip_image_path`` image), or on the image as uint8 at its own
            size for an encoder made with ``pixels="uint8"``.
        encode_batch_size: Images or captions per encoder call.
        latent_codec: Codec of image and CLIP encoder outputs (``"bf16"``, ``"fp8"``,
            ``"int8+zstd"``, ...).
        text_codec: Codec of text encoder outputs.
        caption_variants: Caption variants precomputed per item when its dataset shuffles or
            drops tokens.
        clip_size: CLIP's square input side (224, or 336 for ViT-L/14-336).
        store_pixels: Also store the ``pixels`` field.
        shard: ``(i, n)``: prepare only part ``i`` of ``n`` (0-based) into
            ``out/parts/i-of-n``; :func:`merge` combines the parts once all are done (see
            docs/distributed.md). Python does not read torchrun's ``RANK``/``WORLD_SIZE`` for
            you: pass ``shard=(rank, world_size)`` explicitly.

    Returns:
        dict: items, entries (computed and reused), captions, shards written, findings, seconds.

    Raises:
        EncoderError: an encoder raised; the item is named and the original exception is the
            ``__cause__``. Everything computed before is kept: run again to finish.
    """
    return json.loads(
        _prepare_json(
            _config_arg(config),
            os.fspath(out),
            shard_bytes,
            image_codec,
            progress,
            image_encoders,
            text_encoders,
            clip_encoders,
            encode_batch_size,
            latent_codec,
            text_codec,
            caption_variants,
            clip_size,
            store_pixels,
            None if shard is None else (int(shard[0]), int(shard[1])),
        )
    )


def push(store: PathLike, url: str) -> Dict[str, Any]:
    """Uploads the local store ``store`` to ``url`` (``s3://``, ``gs://``, ``az://``).

    Shards go first (in parts when large), the catalog last; shards already there are skipped,
    so an interrupted push run again sends only the rest. Credentials and endpoints come from
    the environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``; docs/remote.md).

    Returns:
        dict: shards uploaded and already present, bytes, seconds.

    Raises:
        RemoteError: the object storage could not be reached or refused a write.
    """
    return json.loads(_push_json(os.fspath(store), url))


def pull(url: str, dir: PathLike) -> Dict[str, Any]:
    """Downloads the store at ``url`` into the folder ``dir``, checking every shard.

    Returns:
        dict: shards downloaded and already present, bytes, seconds.

    Raises:
        RemoteError: unreachable, or a shard that does not match its checksum.
    """
    return json.loads(_pull_json(url, os.fspath(dir)))


def merge(out: PathLike, parts: Optional[Sequence[PathLike]] = None) -> Dict[str, Any]:
    """Combines the parts of a distributed prepare into one store.

    The merged store lists exactly the items, in the same order, of an unsharded prepare of
    the config, so a :class:`DataLoader` serves the same batches from it. Shards are moved
    into ``out/shards``, the parts are removed; an interrupted merge can be run again.

    Args:
        out: The store folder (or URL) the parts were prepared for
            (``prepare(..., out, shard=...)``).
        parts: Part folders to merge; by default every ``out/parts/i-of-n``.

    Returns:
        dict: parts, items, entries, duplicate_entries, shards, shards_moved, seconds.

    Raises:
        StoreError: a part is missing or unfinished, the parts disagree (split, config,
            encoders), or ``out`` holds a store of another config.
    """
    paths = [os.fspath(p) for p in (parts or [])]
    return json.loads(_merge_json(os.fspath(out), paths))


def import_aitk(
    config: Union[Config, PathLike],
    out: PathLike,
    *,
    arch: Optional[str] = None,
    latent_identity: Optional[str] = None,
    scaling_factor: Optional[float] = None,
    shift_factor: Optional[float] = None,
    text_identity: Optional[str] = None,
    clip_identity: Optional[str] = None,
    latent_codec: str = "bf16",
    text_codec: str = "bf16",
) -> Dict[str, Any]:
    """Prepares a config and imports AI Toolkit's caches found next to its images.

    ``_latent_cache``, ``_t_e_cache`` and ``_clip_vision_cache`` files whose recorded
    parameters (size, crop, flip, latent space version) match larder's plan are copied into
    the store without re-encoding; the others are reported in ``mismatches``. Give the
    identity your encoder declares (``latent_identity``, with its factors) and a later
    :func:`prepare` with that encoder computes only what the import lacked.

    Returns:
        dict: the prepare report, ``arch``, counts per cache kind and ``mismatches``.
    """
    return json.loads(
        _import_aitk_json(
            _config_arg(config),
            os.fspath(out),
            arch,
            latent_identity,
            scaling_factor,
            shift_factor,
            text_identity,
            clip_identity,
            latent_codec,
            text_codec,
        )
    )


def _config_arg(config: Union[Config, PathLike]) -> Union[Config, str]:
    return config if isinstance(config, Config) else os.fspath(config)


class Store:
    """A prepared store, opened for reading.

    Example:
        >>> store = larder.Store.open("target/sample-store")
        >>> store.inspect()["items"]
        36
    """

    def __init__(self, native: _Store):
        self._native = native

    @classmethod
    def open(cls, path: PathLike) -> "Store":
        """Opens the store in the folder ``path``, or at a URL (``s3://``, ``gs://``,
        ``az://``, ``http(s)://``): its catalog is fetched once, its shards read in ranges
        through a local cache (``LARDER_CACHE_DIR``, ``LARDER_CACHE_LIMIT``; docs/remote.md).

        Raises:
            StoreError: not a store, or a damaged catalog.
            RemoteError: the object storage could not be reached or read.
        """
        return cls(_Store.open(os.fspath(path)))

    @property
    def path(self) -> str:
        """The store's folder or URL."""
        return os.fspath(self._native.path)

    def inspect(self) -> Dict[str, Any]:
        """Items, buckets, fields (dtype, codec, bytes, compression), shards and findings."""
        return json.loads(self._native.inspect_json())

    def items(self) -> List[Dict[str, Any]]:
        """Every item, in id order (the ids a batch's ``items`` holds): ``id``, ``dataset``
        (its index in the config), ``path`` (the source image), ``width``/``height`` (its size
        as displayed), ``bucket_w``/``bucket_h``,
        ``scale_to_w``/``scale_to_h`` and ``crop_x``/``crop_y`` (the resize and crop that
        made it), ``flip`` (``"none"``, ``"x"``, ``"y"`` or ``"xy"``), ``caption`` (as
        loaded, before the per-epoch transforms), ``is_reg``, ``network_weight``,
        ``loss_multiplier``, ``frames`` (for a video clip, the indices of the frames it trains
        with; ``None`` for an image) and ``fields`` (field name to entry key)."""
        return json.loads(self._native.items_json())

    def verify(self) -> Dict[str, Any]:
        """Checks every shard checksum and catalog entry.

        Returns:
            dict: counts checked and ``problems`` (empty when the store is sound).
        """
        return json.loads(self._native.verify_json())

    def __repr__(self) -> str:
        return f"Store({self.path!r})"


class DataLoader:
    """Serves a store as batches, as a PyTorch DataLoader would, from reader threads.

    The order is a pure function of ``(seed, epoch, batch-size history)``: the same on every
    run, whatever ``num_threads``, and shared by all ranks (rank r of W takes global batches
    r, r+W, ...; every rank takes the same number of steps). Under torchrun, ``rank`` and
    ``world_size`` default to ``RANK`` and ``WORLD_SIZE``.

    Each batch is a dict: every stored field (``"pixels"``, ``"mask"``, ``"control.0"``, ...)
    as a NumPy array of shape (B, ...) that views memory owned by larder (no copy; the memory
    lives as long as any array that views it), plus ``"captions"`` (list of str, transformed
    per epoch), ``"keys"``, ``"items"``, ``"bucket"``, ``"is_reg"``, ``"network_weight"``,
    ``"loss_multiplier"``, ``"flipped"``, ``"epoch"``, ``"index"`` and ``"dtypes"``.

    Args:
        store: A :class:`Store`, a store folder, or a store URL (``s3://...``; docs/remote.md).
        batch_size: Items per batch (all from one bucket).
        shuffle: Permute items and batches each epoch.
        seed: Seed of the order, the caption transforms and the random flips.
        drop_last: Drop short bucket tails and uneven rank tails instead of filling them.
        num_threads: Reader threads (default: the number of cores, at most 8).
        prefetch: Batches assembled ahead.
        rank: This process's rank (default ``RANK`` or 0).
        world_size: The number of ranks (default ``WORLD_SIZE`` or 1).
        fields: Fields to load (default all).
        pin_memory: Page-locked batch buffers (CUDA allocations through the driver, loaded at
            run time), for fast asynchronous copies to the GPU; without CUDA, ordinary memory
            and a warning with the reason (``pinned`` says which).
        random_flip: Mirror each item's image fields with probability 1/2 per epoch.
        format: ``"numpy"`` or ``"torch"`` (tensors that share the arrays' memory).
        text_padding: ``"right"`` or ``"left"``: where text embeddings (``"<encoder>.embeds"``)
            are padded to the batch's longest caption; ``"<encoder>.mask"`` marks real tokens.

    Example:
        >>> loader = larder.DataLoader("target/sample-store", batch_size=4, seed=42)
        >>> for epoch in range(3):
        ...     for batch in loader:
        ...         ...
        >>> state = loader.state_dict()  # save with the checkpoint; load_state_dict resumes
    """

    def __init__(
        self,
        store: Union[Store, PathLike],
        batch_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_threads: Optional[int] = None,
        prefetch: int = 4,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        fields: Optional[Sequence[str]] = None,
        pin_memory: bool = False,
        random_flip: bool = False,
        format: str = "numpy",
        text_padding: str = "right",
    ):
        if format not in ("numpy", "torch"):
            raise ArgumentError(f"format must be 'numpy' or 'torch', not {format!r}")
        native_store = store._native if isinstance(store, Store) else os.fspath(store)
        self._format = format
        self._loader = _Loader(
            native_store,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            num_threads=num_threads,
            prefetch=prefetch,
            rank=rank,
            world_size=world_size,
            fields=list(fields) if fields is not None else None,
            random_flip=random_flip,
            text_padding=text_padding,
            pin_memory=pin_memory,
        )

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        """Yields the current epoch's batches; the next iteration serves the next epoch.

        Raises:
            LarderError: when iterated inside a worker process of a
                ``torch.utils.data.DataLoader`` (docs/python.md says why and what to do).
        """
        _refuse_torch_worker()
        while True:
            batch = self._loader.next_batch()
            if batch is None:
                return
            if self._format == "torch":
                from .torch import as_tensors

                batch = as_tensors(batch)
            yield batch

    def __len__(self) -> int:
        """Batches this rank serves in the current epoch."""
        return len(self._loader)

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return self._loader.epoch

    @property
    def pinned(self) -> bool:
        """True if and only if batch buffers are page-locked (``pin_memory=True`` with CUDA)."""
        return self._loader.pinned

    def state_dict(self) -> Dict[str, Any]:
        """The loader's position: seed and options, epoch, global batches consumed, and the
        batch-size history. Resuming from it reads none of the skipped data."""
        return json.loads(self._loader.state_json())

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continues from ``state``, also on a different number of ranks."""
        self._loader.load_state_json(json.dumps(state))

    def set_batch_size(self, batch_size: int) -> None:
        """Changes the batch size from the next batch on; recorded in the state."""
        self._loader.set_batch_size(batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Starts ``epoch`` from its beginning (as ``DistributedSampler.set_epoch``)."""
        self._loader.set_epoch(epoch)


def _refuse_torch_worker() -> None:
    """Raises if this process is a worker of a ``torch.utils.data.DataLoader``.

    Each such worker iterates the whole loader it was given: with N workers every batch is
    served N times and an epoch silently becomes N epochs. Only ``torch.utils.data`` as already
    imported is asked (every worker has imported it), so a process without torch pays nothing.
    """
    data = sys.modules.get("torch.utils.data")
    get_worker_info = getattr(data, "get_worker_info", None)
    info = get_worker_info() if get_worker_info is not None else None
    if info is None:
        return
    raise LarderError(
        f"larder.DataLoader is being iterated inside worker {info.id} of "
        f"{info.num_workers} of a torch.utils.data.DataLoader: each worker would serve the "
        "whole epoch, so every batch would be seen once per worker. Iterate the larder "
        "DataLoader directly in the training process (format=\"torch\" gives tensors; its "
        "reader threads, num_threads=, do the work that DataLoader workers would); where a "
        "framework insists on a torch DataLoader, wrap it in an IterableDataset and give "
        "num_workers=0, batch_size=None."
    )


_NOTICES: set = set()


def _notice_once(message: str) -> None:
    if message not in _NOTICES:
        _NOTICES.add(message)
        warnings.warn(message, stacklevel=3)
