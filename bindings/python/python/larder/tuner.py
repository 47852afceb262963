"""The batch-size tuner: the largest batch that fits, found while training."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Type

from ._larder import Tuner as _Tuner
from ._larder import TunerExhaustedError


def _default_oom_errors() -> Tuple[Type[BaseException], ...]:
    try:
        import torch

        return (torch.cuda.OutOfMemoryError, MemoryError)
    except (ImportError, AttributeError):
        return (MemoryError,)


class BatchSizeTuner:
    """Drives a :class:`larder.DataLoader`'s batch size from how training steps go.

    Warm-up grows the size linearly from ``initial`` to ``target``; an out-of-memory error
    shrinks it by ``backoff`` and the failed step's items are served again in smaller batches;
    ``max_consecutive_ooms`` failures in a row (or one at ``min``) raise
    :class:`larder.TunerExhaustedError`; after ``grow_after`` good steps with peak
    memory under ``safety_margin`` of capacity, the size grows by ``grow`` (never back to a size
    that failed). Every change goes to the loader, so the next batch really has the new size,
    and into its state, so a resumed run repeats it.

    Args:
        loader: The :class:`larder.DataLoader` to drive, or the
            :class:`larder.torch.CudaPrefetcher` over it (which drops its look-ahead on a change).
        initial: Size of the first step.
        target: Size at the end of the warm-up (default ``initial``).
        warmup_steps: Steps of the linear warm-up.
        min: Smallest size.
        max: Largest size.
        backoff: Factor applied after an out-of-memory error.
        max_consecutive_ooms: Failures in a row before giving up.
        grow_after: Good steps in a row before growing (0: never grow).
        grow: Relative growth.
        safety_margin: Grow only when peak memory stayed below this fraction of capacity.
        oom_errors: Exceptions that mean "out of memory" (default: torch.cuda.OutOfMemoryError
            when torch is installed, and MemoryError).
        memory: A function returning (peak bytes, capacity bytes) of the last step, or None;
            by default torch.cuda's peak statistics when CUDA is available.

    Example:
        >>> tuner = larder.BatchSizeTuner(loader, initial=1, target=16, warmup_steps=100, grow_after=50)
        >>> for batch in loader:
        ...     loss = tuner.step(train_step, batch)  # None when the step ran out of memory
    """

    def __init__(
        self,
        loader: Any,
        initial: int = 1,
        target: Optional[int] = None,
        warmup_steps: int = 0,
        min: int = 1,
        max: int = 1024,
        backoff: float = 0.75,
        max_consecutive_ooms: int = 3,
        grow_after: int = 0,
        grow: float = 0.25,
        safety_margin: float = 0.85,
        oom_errors: Optional[Tuple[Type[BaseException], ...]] = None,
        memory: Optional[Callable[[], Optional[Tuple[int, int]]]] = None,
    ):
        self._tuner = _Tuner(
            initial=initial,
            target=initial if target is None else target,
            warmup_steps=warmup_steps,
            min=min,
            max=max,
            backoff=backoff,
            max_consecutive_ooms=max_consecutive_ooms,
            grow_after=grow_after,
            grow=grow,
            safety_margin=safety_margin,
        )
        self._loader = loader
        self._oom = oom_errors if oom_errors is not None else _default_oom_errors()
        self._memory = memory if memory is not None else _cuda_memory
        loader.set_batch_size(self._tuner.batch_size)

    @property
    def batch_size(self) -> int:
        """The batch size the loader serves next."""
        return self._tuner.batch_size

    def history(self) -> List[Tuple[int, int, int, str]]:
        """Every change so far: (step, from, to, reason)."""
        return self._tuner.history()

    def step(self, fn: Callable[[Any], Any], batch: Any) -> Any:
        """Runs ``fn(batch)`` and adapts the batch size to how it went.

        Returns:
            What ``fn`` returned, or None when it ran out of memory (its items are served
            again, in smaller batches).

        Raises:
            TunerExhaustedError: out of memory ``max_consecutive_ooms`` times in a row, or at
                ``min``; the last out-of-memory error is its ``__cause__``.
        """
        _reset_peak()
        try:
            result = fn(batch)
        except self._oom as oom:
            _clear_cache()
            try:
                size, _, _ = self._tuner.record_oom()
            except TunerExhaustedError as exhausted:
                raise exhausted from oom
            retry = getattr(self._loader, "retry_step_with", None)  # a CudaPrefetcher's
            (retry or self._loader._loader.retry_step_with)(size)
            return None
        measured = self._memory()
        peak, capacity = measured if measured is not None else (None, None)
        size, _, changed = self._tuner.record_fit(peak, capacity)
        if changed is not None:
            self._loader.set_batch_size(size)
        return result

    def probe(self, step_fn: Callable[[int], Any]) -> int:
        """Finds the largest size in ``min..=max`` for which ``step_fn(size)`` runs without an
        out-of-memory error (binary search), and sets the loader to it.

        Args:
            step_fn: Runs one training step at the given batch size (with synthetic data, say).

        Returns:
            int: the size found.

        Raises:
            TunerExhaustedError: even ``min`` runs out of memory; the out-of-memory error at
                ``min`` is its ``__cause__``.
        """
        last_oom: List[BaseException] = []

        def fits(size: int) -> bool:
            try:
                step_fn(size)
                return True
            except self._oom as oom:
                _clear_cache()
                last_oom[:] = [oom]
                return False

        try:
            size = self._tuner.probe(fits)
        except TunerExhaustedError as exhausted:
            raise exhausted from (last_oom[0] if last_oom else None)
        self._loader.set_batch_size(size)
        return size


def _cuda():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def _cuda_memory() -> Optional[Tuple[int, int]]:
    torch = _cuda()
    if torch is None:
        return None
    return torch.cuda.max_memory_allocated(), torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


def _reset_peak() -> None:
    torch = _cuda()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()


def _clear_cache() -> None:
    torch = _cuda()
    if torch is not None:
        torch.cuda.empty_cache()
