#!/usr/bin/env python3
"""larder's training-loop helpers on a real GPU: what cannot be measured on a CPU machine.

    pip install ./bindings/python torch          # a CUDA build of torch
    python scripts/gpu_check.py [--store target/sample-store] [--steps 50]

Prints one table per check:

1. Host-to-device copy bandwidth from pageable and from page-locked (``pin_memory``) memory,
   and, with ``--store``, from a larder batch loaded with ``pin_memory=True``.
2. Step time of a synthetic compute step fed with copied batches, without a prefetcher
   (copy, then compute, on one stream) and with ``larder.torch.CudaPrefetcher`` (copies of the
   next batches on a side stream, overlapping the compute), median over ``--steps`` steps.
3. ``larder.BatchSizeTuner`` against real ``torch.cuda.OutOfMemoryError``: the probe's largest
   size against the size predicted from free memory, and the tuner's back-off from a size that
   does not fit, over a stand-in loader that records the sizes it is given.

This script needs an NVIDIA GPU and a CUDA build of torch; it was written on a machine without
one and has not been run on a GPU there. ``--dry-run`` runs what does not need a GPU (argument
handling, the table, the tuner check against a simulated out-of-memory error) so that the
script can be checked anywhere torch is installed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable, List, Optional, Sequence

import larder
import larder.torch as lt

MIB = 1 << 20


def table(title: str, header: Sequence[str], rows: List[Sequence[Any]]) -> str:
    """A plain-text table: a title, a header and right-aligned columns after the first."""
    cells = [list(map(str, header))] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    lines = [title, "-" * len(title)]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


class RecordingLoader:
    """A stand-in for larder.DataLoader in the tuner check: batches of the size it was last
    given, and every size it was given."""

    def __init__(self, steps: int):
        self.steps = steps
        self.size = 1
        self.sizes: List[int] = []
        self.retries = 0

    def set_batch_size(self, size: int) -> None:
        self.size = size
        self.sizes.append(size)

    def retry_step_with(self, size: int) -> None:
        self.retries += 1
        self.set_batch_size(size)

    def __iter__(self):
        for _ in range(self.steps):
            yield {"items": list(range(self.size))}


def tuner_check(fits: Callable[[int], None], oom: type, limit: int, predicted: Optional[int]) -> List[Sequence[Any]]:
    """Runs the probe and a back-off from ``limit`` with ``fits(size)`` raising ``oom`` when
    ``size`` items do not fit; returns the table rows."""
    loader = RecordingLoader(steps=8)
    probe = larder.BatchSizeTuner(loader, initial=1, min=1, max=limit, oom_errors=(oom,), memory=lambda: None)
    found = probe.probe(fits)
    loader = RecordingLoader(steps=12)
    tuner = larder.BatchSizeTuner(loader, initial=limit, min=1, max=limit, max_consecutive_ooms=20, oom_errors=(oom,), memory=lambda: None)
    ooms, settled = 0, None
    for step, batch in enumerate(loader):
        if tuner.step(lambda b: fits(len(b["items"])) or "fit", batch) is None:  # None: out of memory
            ooms += 1
        elif settled is None:
            settled = (step, len(batch["items"]))
    rows: List[Sequence[Any]] = [
        ("probe: largest size that fits", found, "-" if predicted is None else predicted),
        ("back-off: out-of-memory errors before a fit", ooms, "-"),
        ("back-off: size that fit", settled[1] if settled else "none", f"<= {found}"),
        ("sizes the loader was given", " ".join(map(str, loader.sizes)), ""),
    ]
    return rows


def bandwidth(torch: Any, device: Any, nbytes: int, repeats: int) -> List[Sequence[Any]]:
    """GB/s of host-to-device copies from pageable and page-locked memory."""
    pageable = torch.empty(nbytes, dtype=torch.uint8)
    pinned = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    rows = []
    for name, src, non_blocking in (("pageable", pageable, False), ("pinned", pinned, True)):
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            t = time.perf_counter()
            src.to(device, non_blocking=non_blocking)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        median = statistics.median(times)
        rows.append((f"{name} ({nbytes // MIB} MiB)", median * 1e3, nbytes / median / 1e9))
    return rows


def step_times(torch: Any, device: Any, steps: int, batch_mib: int) -> List[Sequence[Any]]:
    """Median step time of a synthetic step (matmuls on a copied batch), without and with
    the prefetcher, batches in pinned memory."""
    elems = batch_mib * MIB // 4
    side = int((elems // 64) ** 0.5) // 8 * 8 or 8
    weight = torch.randn(side, side, device=device)

    def batches(n: int):
        host = [torch.randn(64, side, side).pin_memory() for _ in range(3)]
        for k in range(n):
            yield {"x": host[k % 3]}

    def compute(x: Any) -> Any:
        y = x
        for _ in range(4):
            y = torch.tanh(y @ weight)
        return y.sum()

    def run(source: Any, copy: bool) -> float:
        times = []
        for batch in source:
            torch.cuda.synchronize()
            t = time.perf_counter()
            x = batch["x"].to(device, non_blocking=True) if copy else batch["x"]
            compute(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return statistics.median(times[2:] or times)

    compute(torch.randn(64, side, side, device=device))  # warm-up: kernels, allocator
    plain = run(batches(steps), copy=True)
    # With the prefetcher the timer also covers handing out the next batch, which is where the
    # copies of later batches are issued.
    times = []
    source = lt.CudaPrefetcher(batches(steps), depth=2, device=device)
    iterator = iter(source)
    while True:
        torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        compute(batch["x"])
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    prefetched = statistics.median(times[2:] or times)
    return [
        (f"copy then compute ({batch_mib} MiB batch)", plain * 1e3, 1.0),
        ("CudaPrefetcher(depth=2)", prefetched * 1e3, plain / prefetched),
    ]


def larder_batch(torch: Any, device: Any, store: str, repeats: int) -> List[Sequence[Any]]:
    """Copy bandwidth of a larder batch loaded with pin_memory=True, and whether it is pinned."""
    loader = larder.DataLoader(store, batch_size=8, seed=0, format="torch", pin_memory=True)
    batch = next(iter(loader))
    pixels = batch["pixels"]
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        pixels.to(device, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return [(f"larder pixels {tuple(pixels.shape)} pinned={pixels.is_pinned()}", median * 1e3, pixels.numel() / median / 1e9)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a prepared larder store, for the larder batch row")
    parser.add_argument("--steps", type=int, default=50, help="steps per step-time run")
    parser.add_argument("--copy-mib", type=int, default=256, help="bytes per bandwidth copy, MiB")
    parser.add_argument("--dry-run", action="store_true", help="run the parts that need no GPU")
    args = parser.parse_args(argv)

    if args.dry_run:
        class SimulatedOom(Exception):
            pass

        def fits(size: int) -> None:
            if size > 37:
                raise SimulatedOom(f"{size} items do not fit")

        print(table("BatchSizeTuner vs a simulated out-of-memory error (limit 37)", ("check", "got", "expected"), tuner_check(fits, SimulatedOom, 128, 37)))
        return 0

    try:
        import torch
    except ImportError:
        print("gpu_check.py needs torch with CUDA: pip install torch", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA GPU: torch.cuda.is_available() is False; nothing measured (--dry-run checks the rest)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    print(f"{props.name}, {props.total_memory / (1 << 30):.1f} GiB, torch {torch.__version__}, larder {larder.__version__}\n")

    rows = bandwidth(torch, device, args.copy_mib * MIB, repeats=10)
    if args.store:
        rows += larder_batch(torch, device, args.store, repeats=10)
    print(table("Host-to-device copies (median of 10)", ("source", "ms", "GB/s"), rows))

    print(table(f"Synthetic step time (median of {args.steps} steps)", ("feeding", "ms/step", "speed-up"), step_times(torch, device, args.steps, batch_mib=64)))

    per_item = max(MIB, props.total_memory // 40)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    predicted = free // per_item

    def fits(size: int) -> None:
        block = torch.empty(size * per_item, dtype=torch.uint8, device=device)
        block.fill_(1)
        del block

    rows = tuner_check(fits, torch.cuda.OutOfMemoryError, limit=128, predicted=predicted)
    print(table(f"BatchSizeTuner vs torch.cuda.OutOfMemoryError ({per_item // MIB} MiB per item)", ("check", "got", "expected"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
