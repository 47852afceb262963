"""PyTorch helpers: batches as tensors that share the NumPy arrays' memory, and a prefetcher
that copies the next batches to the GPU while the current one trains."""

from __future__ import annotations

import collections
import json
from typing import Any, Callable, Deque, Dict, Iterator, Tuple

from . import _notice_once


def as_tensors(batch: Dict[str, Any]) -> Dict[str, Any]:
    """Turns a batch's arrays into torch tensors without copying.

    Fields stored as bfloat16 arrive as uint16 arrays (NumPy has no bfloat16) and are viewed as
    ``torch.bfloat16``; float16 as ``torch.float16``. A list of arrays (a field whose items
    differ in size, such as ``control_raw.0``) becomes a list of tensors. Other entries are
    passed through.

    Args:
        batch: A batch from :class:`larder.DataLoader`.

    Returns:
        dict: the same keys, arrays replaced by tensors.
    """
    import numpy as np
    import torch

    views = {"BF16": torch.bfloat16, "F16": torch.float16, "BOOL": torch.bool}
    dtypes = batch.get("dtypes", {})
    out: Dict[str, Any] = {}

    def tensor(key: str, array: Any) -> Any:
        t = torch.from_numpy(array)
        return t.view(views[dtypes[key]]) if dtypes.get(key) in views else t

    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            out[key] = tensor(key, value)
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            # A field whose items differ in size (``control_raw.N``): one tensor per item.
            out[key] = [tensor(key, v) for v in value]
        else:
            out[key] = value
    return out


class CudaPrefetcher:
    """Copies the next ``depth`` batches to the GPU on a side CUDA stream while the training
    step runs on the current one.

    Every tensor of a batch is copied, nested dicts, lists and tuples included (NumPy arrays of
    a larder batch become tensors first, as :func:`as_tensors` makes them); other values pass
    through. Copies are issued with ``non_blocking=True`` on a stream of their own; before a
    batch is handed out, the consuming stream (the current one) waits for that batch's copies
    (an event recorded after them, so it never waits for the copies of later batches), and
    each GPU tensor is marked as used by the consuming stream (``record_stream``) so that the
    caching allocator does not hand its memory to a later copy while the step still reads it.
    A batch's host memory is let go only once its copies are done, which matters when the
    loader reuses page-locked buffers (``pin_memory=True``).

    Without CUDA (or without torch), batches pass through unchanged and a notice says so once.

    A loader error is raised at its batch's position, after the batches before it; nothing
    after it is fetched, so iterating again goes on with the next batch, as the loader does.

    Over a :class:`larder.DataLoader`, the prefetcher stands in for the loader where the batch
    size and the position matter: give it to :class:`larder.BatchSizeTuner`, and save its
    ``state_dict()``. A batch-size change drops the batches fetched ahead and serves their items
    again at the new size, so the next batch really has it; ``state_dict()`` is the position
    after the batches handed out, not after those fetched ahead.

    Args:
        loader: An iterable of batches, e.g. :class:`larder.DataLoader`.
        depth: Batches copied ahead of the one being trained on.
        device: The CUDA device.

    Example:
        >>> loader = larder.DataLoader(store, batch_size=16, format="torch", pin_memory=True)
        >>> batches = larder.torch.CudaPrefetcher(loader, depth=2)
        >>> tuner = larder.BatchSizeTuner(batches, initial=4, target=16, warmup_steps=100)
        >>> for batch in batches:
        ...     loss = tuner.step(train_step, batch)  # batch["latent"] is on the GPU already
    """

    def __init__(self, loader: Any, depth: int = 2, device: Any = "cuda"):
        if int(depth) < 1:
            raise ValueError(f"depth must be at least 1, not {depth!r}")
        self.loader = loader
        self.depth = int(depth)
        self.device = device
        # Batches fetched ahead, in loader order.
        self._ahead: Deque[_Fetched] = collections.deque()
        # Host batches whose copies may still be reading them, with the copies' events.
        self._retiring: Deque[Tuple[Any, Any]] = collections.deque()
        # The loader position before the batch being trained on (for retry_step_with).
        self._current: Any = None
        self._batches: Any = None
        self._stopped = False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        torch = _cuda_torch(self.device)
        if torch is None:
            _notice_once(
                f"larder.torch.CudaPrefetcher: CUDA is not available for device {self.device!r}; "
                "batches are passed through unchanged"
            )
            yield from self.loader
            return
        yield from self._prefetch(torch, torch.device(self.device))

    def set_batch_size(self, batch_size: int) -> None:
        """Changes the batch size from the next batch handed out (batches fetched ahead are
        dropped; their items are served again at the new size)."""
        if self._ahead:
            self._restart_at(self._ahead[0].position)
        self.loader.set_batch_size(batch_size)

    def retry_step_with(self, batch_size: int) -> None:
        """Serves the items of the batch last handed out again, at ``batch_size``, and the rest
        of the epoch after them (after an out-of-memory error)."""
        if self._current is None:  # passing through: the loader is where the consumer is
            _native(self.loader).retry_step_with(batch_size)
            return
        self._restart_at(self._current)
        self.loader.set_batch_size(batch_size)

    def state_dict(self) -> Dict[str, Any]:
        """The loader's position after the batches handed out so far."""
        if self._ahead:
            return json.loads(_require(self._ahead[0].position))
        return self.loader.state_dict()

    def _restart_at(self, position: Any) -> None:
        """Drops the look-ahead and moves the loader back to ``position``."""
        state = json.loads(_require(position))
        for dropped in self._ahead:
            if dropped.host is not None:
                self._retiring.append((dropped.done, dropped.host))
        self._ahead.clear()
        self.loader.load_state_dict(state)
        self._batches = iter(self.loader)
        self._stopped = False

    def _launch(self, torch: Any, side: Any, device: Any) -> None:
        """Fetches the next batch and starts copying it on ``side``."""
        position = _position(self.loader)
        try:
            host = next(self._batches)
        except StopIteration:
            self._stopped = True
            return
        except Exception as error:  # raised at its position, after the batches before it
            self._stopped = True
            self._ahead.append(_Fetched(position, error=error))
            return
        with torch.cuda.stream(side):
            moved = _to_device(torch, host, device)
            done = torch.cuda.Event()
            done.record(side)
        self._ahead.append(_Fetched(position, moved, done, host))

    def _prefetch(self, torch: Any, device: Any) -> Iterator[Any]:
        side = torch.cuda.Stream(device=device)
        # Batches fetched ahead by an iteration that was left early come first: a larder
        # DataLoader is already past them. A plain iterable starts over, so they are dropped.
        if any(f.position is None for f in self._ahead):
            self._ahead.clear()
        self._batches, self._stopped = iter(self.loader), False
        while True:
            # The batch to hand out, and `depth` more whose copies run during its step.
            while len(self._ahead) <= self.depth and not self._stopped:
                self._launch(torch, side, device)
            if not self._ahead:
                self._current = None
                return
            fetched = self._ahead.popleft()
            self._current = fetched.position
            if fetched.error is not None:
                self._current = None
                raise fetched.error
            consumer = torch.cuda.current_stream(device)
            consumer.wait_event(fetched.done)
            _each_tensor(torch, fetched.moved, lambda t: t.record_stream(consumer))
            self._retiring.append((fetched.done, fetched.host))
            while self._retiring and self._retiring[0][0].query():
                self._retiring.popleft()
            yield fetched.moved


class _Fetched:
    """A batch fetched ahead: its GPU copy, the event after the copies, the host batch, and
    the loader's position before it; or the error the loader raised in its place."""

    __slots__ = ("position", "moved", "done", "host", "error")

    def __init__(self, position: Any, moved: Any = None, done: Any = None, host: Any = None, error: Any = None):
        self.position, self.moved, self.done, self.host, self.error = position, moved, done, host, error


def _require(position: Any) -> Any:
    if position is None:
        raise TypeError("batch-size changes and state_dict need the prefetcher to wrap a larder.DataLoader")
    return position


def _native(loader: Any) -> Any:
    """The native loader behind a :class:`larder.DataLoader`."""
    native = getattr(loader, "_loader", None)
    if native is None:
        raise TypeError(f"batch-size changes need a larder.DataLoader, not {type(loader).__name__}")
    return native


def _position(loader: Any) -> Any:
    """The loader's position as JSON, when it is a larder DataLoader (cheap: no parsing)."""
    native = getattr(loader, "_loader", None)
    return None if native is None else native.state_json()


def _cuda_torch(device: Any) -> Any:
    """torch, when it is installed and ``device`` is an available CUDA device; else None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        return None
    return torch


def _to_device(torch: Any, value: Any, device: Any) -> Any:
    """``value`` with every tensor (and NumPy array) copied to ``device``, non-blocking."""
    import numpy as np

    if isinstance(value, dict):
        if any(isinstance(v, np.ndarray) for v in value.values()):
            value = as_tensors(value)
        return {k: _to_device(torch, v, device) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value).to(device, non_blocking=True)
    if isinstance(value, list):
        return [_to_device(torch, v, device) for v in value]
    if isinstance(value, tuple):
        moved = [_to_device(torch, v, device) for v in value]
        return type(value)(*moved) if hasattr(value, "_fields") else tuple(moved)
    return value


def _each_tensor(torch: Any, value: Any, fn: Callable[[Any], Any]) -> None:
    if isinstance(value, torch.Tensor):
        fn(value)
    elif isinstance(value, dict):
        for v in value.values():
            _each_tensor(torch, v, fn)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _each_tensor(torch, v, fn)

