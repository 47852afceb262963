"""Training metrics: records per step to a JSON-lines file, Prometheus, the live dashboard and
the terminal, with the loader's own counters and GPU memory from torch."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple, Union

from ._larder import Metrics as _Metrics

GpuReading = Tuple[int, int, int, Optional[int]]


class Metrics:
    """Records each training step and sends the record to the outputs that are switched on.

    Every record has the step's loss, learning rate, batch size, throughput and step time; with
    a loader attached, the time the step waited for its batch, the loader's queue depth, bytes
    read and assembly/decode time; this process's RSS and PSS (read at most every
    ``memory_every`` seconds); and, when torch has CUDA, GPU memory (allocated, reserved, peak,
    capacity). The record schema is in docs/metrics.md.

    Args:
        jsonl: Append one JSON line per step to this file (``larder dashboard FILE`` plots it).
        listen: Serve ``/metrics`` (Prometheus), ``/api/records`` and the dashboard page on
            this address, e.g. ``"127.0.0.1:9100"`` (port 0 picks a free one; see ``address``).
        loader: A :class:`larder.DataLoader` whose counters to include.
        print_every: Print the terminal dashboard to standard error this often (seconds);
            None or 0 never.
        memory_every: Read RSS/PSS at most this often (seconds).
        total_steps: Steps the run will take (progress and time left on the dashboards).
        history: Records kept in memory for ``/api/records``.
        gpu_memory: A function returning (allocated, reserved, peak, capacity or None) bytes, or
            None; by default torch.cuda's statistics when torch is imported and has CUDA.

    Example:
        >>> metrics = larder.Metrics("runs/metrics.jsonl", listen="127.0.0.1:9100", loader=loader, total_steps=1000)
        >>> for batch in loader:
        ...     loss = train_step(batch)
        ...     metrics.step(loss=loss, lr=scheduler.get_last_lr()[0], batch_size=len(batch["items"]))
    """

    def __init__(
        self,
        jsonl: Optional[Union[str, "os.PathLike[str]"]] = None,
        *,
        listen: Optional[str] = None,
        loader: Any = None,
        print_every: Optional[float] = 10.0,
        memory_every: float = 1.0,
        total_steps: Optional[int] = None,
        history: int = 20_000,
        gpu_memory: Optional[Callable[[], Optional[GpuReading]]] = None,
    ):
        self._native = _Metrics(
            jsonl=os.fspath(jsonl) if jsonl is not None else None,
            listen=listen,
            print_every=print_every,
            memory_every=memory_every,
            total_steps=total_steps,
            history=history,
        )
        self._gpu = gpu_memory if gpu_memory is not None else _TorchGpu()
        if loader is not None:
            self.attach_loader(loader)

    def attach_loader(self, loader: Any) -> None:
        """Includes a :class:`larder.DataLoader`'s counters (wait, queue, bytes, assembly)."""
        # A CudaPrefetcher stands in for its loader.
        loader = getattr(loader, "loader", loader)
        self._native.attach_loader(getattr(loader, "_loader", loader))

    def step(self, loss: Any = None, lr: Optional[float] = None, batch_size: Optional[int] = None) -> None:
        """Records one training step.

        Args:
            loss: The step's loss: a number, or a one-element tensor (read with ``float()``,
                which waits for the GPU to finish the step; the loss straight from the
                forward pass, still attached to the autograd graph, is fine).
            lr: The step's learning rate.
            batch_size: Items in the step's batch.
        """
        # A loss that requires grad is detached first: torch warns when one is converted to a
        # number directly.
        detach = getattr(loss, "detach", None)
        if detach is not None:
            loss = detach()
        self._native.step(
            None if loss is None else float(loss),
            None if lr is None else float(lr),
            batch_size,
            self._gpu(),
        )

    def last(self) -> Dict[str, Any]:
        """The last record, as a dict (the JSON-lines schema)."""
        return json.loads(self._native.last_json())

    def dashboard(self) -> str:
        """The terminal dashboard for the last record."""
        return self._native.dashboard()

    @property
    def address(self) -> Optional[str]:
        """``http://host:port`` of the endpoint (for ``larder dashboard`` and Prometheus), or None."""
        addr = self._native.address
        return None if addr is None else f"http://{addr}"

    def flush(self) -> None:
        """Writes buffered records to the JSON-lines file (done every second and at exit)."""
        self._native.flush()

    def close(self) -> None:
        """Appends the end record (``"event": "end"``, which tells ``larder dashboard`` the run
        ended), writes the buffered records and stops the endpoint (also on leaving a ``with``
        block); later calls raise :class:`larder.LarderError`."""
        self._native.close()

    def __enter__(self) -> "Metrics":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _TorchGpu:
    """torch.cuda's memory statistics of the current device, when torch is in use with CUDA.

    torch is never imported here: a program that has not imported it has no GPU tensors.
    """

    def __init__(self) -> None:
        self._cuda: Any = None
        self._checked = False
        self._total: Dict[int, int] = {}

    def __call__(self) -> Optional[GpuReading]:
        if not self._checked:
            torch = sys.modules.get("torch")
            if torch is None:
                return None
            self._checked = True
            if torch.cuda.is_available():
                self._cuda = torch.cuda
        cuda = self._cuda
        if cuda is None:
            return None
        device = cuda.current_device()
        if device not in self._total:
            self._total[device] = cuda.get_device_properties(device).total_memory
        return (cuda.memory_allocated(device), cuda.memory_reserved(device), cuda.max_memory_allocated(device), self._total[device])
