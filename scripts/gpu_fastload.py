#!/usr/bin/env python3
"""Checks larder's GPU load paths (cuFile, pinned + async copies, plain) and the pinned
DataLoader on a machine with an NVIDIA GPU, and times them against safetensors.

This script cannot run on the development machine, which has no GPU: it was written there,
its CPU part (``--cpu-only``) was run there with torch, and its GPU part is for the GPU machine:

    python -m venv .venv && .venv/bin/pip install torch safetensors numpy ./bindings/python
    .venv/bin/python scripts/gpu_fastload.py --size 4G

Every check is an assertion: the script exits non-zero at the first wrong result.
1. ``larder.cuda_probe()``: driver, devices and every GPUDirect Storage requirement (printed).
2. Equality with ``safetensors.torch.load_file`` on a checkpoint with every torch dtype
   (bf16, fp16, fp8 e4m3/e5m2, ints, bool, empty and scalar tensors): to the CPU, to the CPU in
   page-locked memory (``tensor.is_pinned()``), and to ``cuda:0`` by each path the probe says
   is available; a path it says is unavailable must fail with that reason when forced.
3. The automatic choice: cuFile when ``gds_usable``, else pinned; the report's fallbacks.
4. ``LARDER_NO_CUDA=1`` (as if the driver were absent): the probe says why, pinned host loads
   fall back to ordinary memory, GPU loads fail with the reason.
5. ``DataLoader(pin_memory=True)``: ``loader.pinned``, batches page-locked and equal to an
   unpinned loader's after a ``non_blocking`` copy to the GPU.
6. Timings (median of ``--runs``), cold (page cache emptied) and warm: a generated checkpoint of
   ``--size`` to ``cuda:0`` by larder (auto and each path) against
   ``safetensors.torch.load_file(device="cuda:0")``, and to the CPU, with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save_file

import larder


def every_dtype_checkpoint(path: str) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, dtype in [
        ("bf16", torch.bfloat16),
        ("f16", torch.float16),
        ("f32", torch.float32),
        ("f64", torch.float64),
        ("e4m3", torch.float8_e4m3fn),
        ("e5m2", torch.float8_e5m2),
        ("i8", torch.int8),
        ("u8", torch.uint8),
        ("i16", torch.int16),
        ("i32", torch.int32),
        ("i64", torch.int64),
        ("bool", torch.bool),
    ]:
        for j, shape in enumerate([(), (0,), (7,), (33, 65), (2, 0, 4), (256, 1024)]):
            n = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            raw = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
            if dtype == torch.bool:
                raw = raw % 2
            tensors[f"{name}.{j}"] = raw.view(dtype).reshape(shape)
    save_file(tensors, path, metadata={"made_by": "gpu_fastload.py"})


def big_checkpoint(path: str, size: int) -> None:
    """bf16 4096x4096 matrices up to `size` bytes, written once."""
    if os.path.exists(path) and abs(os.path.getsize(path) - size) < (64 << 20):
        return
    g = torch.Generator().manual_seed(1)
    n = max(1, size // (4096 * 4096 * 2))
    tensors = {f"blocks.{i}.weight": torch.randn(4096, 4096, generator=g).to(torch.bfloat16) for i in range(n)}
    save_file(tensors, path)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN-safe), on whatever devices the tensors are."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8).cpu(), b.reshape(-1).view(torch.uint8).cpu())


def assert_equal(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: names differ"
    for k in want:
        assert same_bits(got[k], want[k]), f"{what}: tensor {k} differs ({got[k].dtype} {got[k].shape})"
    print(f"ok   {what}: {len(want)} tensors equal to safetensors.torch.load_file")


def evict(path: str) -> str:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        try:
            with open("/proc/sys/vm/drop_caches", "w") as d:
                d.write("1")
            return "drop_caches"
        except OSError:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            return "fadvise"


def timed(fn, path: str, runs: int, cold: bool) -> float:
    times = []
    if not cold:
        fn()
    for _ in range(runs):
        if cold:
            evict(path)
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del out
    return statistics.median(times)


def cpu_checks(small: str) -> None:
    want = st_load_file(small)
    assert_equal(larder.load_file(small), want, "larder.load_file(cpu)")
    with larder.safe_open(small, framework="pt") as f:
        assert f.metadata() == {"made_by": "gpu_fastload.py"}
        assert_equal({k: f.get_tensor(k) for k in f.keys()}, want, "larder.safe_open(pt).get_tensor")
    cast = larder.load_file(small, dtype=torch.float16)
    assert cast["bf16.3"].dtype == torch.float16 and cast["i32.3"].dtype == torch.int32
    assert same_bits(cast["bf16.3"], want["bf16.3"].to(torch.float16))
    print("ok   dtype=torch.float16 casts floating tensors only")


def no_cuda_checks(small: str) -> None:
    code = f"""
import larder, json
p = larder.cuda_probe()
assert p["driver_error"] and "LARDER_NO_CUDA" in p["driver_error"], p
r = larder.fastload.load({small!r}, pinned=True).report
assert r["path"] == "plain" and "pinned host memory unavailable" in r["fallbacks"][0], r
try:
    larder.load_file({small!r}, device="cuda:0")
    raise SystemExit("a GPU load without the driver must fail")
except larder.LarderError as e:
    assert "LARDER_NO_CUDA" in str(e), e
print("ok   LARDER_NO_CUDA=1: probe, pinned fallback and GPU error report the reason")
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "LARDER_NO_CUDA": "1"})


def gpu_checks(small: str, probe: dict) -> None:
    want = st_load_file(small, device="cuda:0")
    pinned = larder.fastload.load(small, pinned=True)
    assert pinned.report["path"] == "pinned", pinned.report
    assert pinned.tensors["f32.5"].is_pinned(), "pinned host tensors must be page-locked"
    assert_equal(pinned.tensors, st_load_file(small), "larder.load_file(cpu, pinned=True)")
    for method in ["cufile", "pinned", "plain"]:
        if method == "cufile" and not probe["gds_usable"]:
            try:
                larder.load_file(small, device="cuda:0", method="cufile")
                raise AssertionError("method='cufile' must fail where the probe says GDS is unusable")
            except larder.LarderError as e:
                print(f"ok   cufile unavailable, as the probe says: {e}")
            continue
        loaded = larder.fastload.load(small, device="cuda:0", method=method)
        assert loaded.report["path"] == method, loaded.report
        assert all(t.device == torch.device("cuda:0") for t in loaded.tensors.values())
        assert_equal(loaded.tensors, want, f"larder.load_file(cuda:0, method={method!r})")
    auto = larder.fastload.load(small, device="cuda:0")
    expected = "cufile" if probe["gds_usable"] else "pinned"
    assert auto.report["path"] == expected, auto.report
    print(f"ok   automatic choice: {auto.report['path']}; fallbacks: {auto.report['fallbacks']}")


def loader_checks(root: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python", "tests"))
    from conftest import make_dataset

    config = make_dataset(root, n=24)
    store = os.path.join(root, "store")
    larder.prepare(config, store)
    pinned = larder.DataLoader(store, batch_size=4, seed=1, pin_memory=True)
    plain = larder.DataLoader(store, batch_size=4, seed=1)
    assert pinned.pinned and not plain.pinned
    stream = torch.cuda.Stream()
    for a, b in zip(pinned, plain):
        t = torch.from_numpy(a["pixels"])
        assert t.is_pinned(), "pin_memory=True batches must be page-locked"
        with torch.cuda.stream(stream):
            on_gpu = t.to("cuda:0", non_blocking=True)
        stream.synchronize()
        assert torch.equal(on_gpu.cpu(), torch.from_numpy(b["pixels"]))
    print("ok   DataLoader(pin_memory=True): page-locked batches, equal after non_blocking copies")


def timings(big: str, runs: int, gpu: bool) -> None:
    gb = os.path.getsize(big) / 1e9
    rows = []
    if gpu:
        rows.append(("safetensors.torch.load_file(cuda:0)", lambda: st_load_file(big, device="cuda:0")))
        rows.append(("larder.load_file(cuda:0) auto", lambda: larder.load_file(big, device="cuda:0")))
        for m in ["cufile", "pinned", "plain"]:
            if m == "cufile" and not larder.cuda_probe(big)["gds_usable"]:
                continue
            rows.append((f"larder.load_file(cuda:0, method={m!r})", lambda m=m: larder.load_file(big, device="cuda:0", method=m)))
    rows.append(("safetensors.torch.load_file(cpu)", lambda: {k: v.sum() for k, v in st_load_file(big).items()}))
    rows.append(("larder.load_file(cpu)", lambda: {k: v.sum() for k, v in larder.load_file(big).items()}))
    print(f"\n{os.path.basename(big)}: {gb:.2f} GB, median of {runs}; cold = page cache emptied ({evict(big)})")
    print(f"{'contender':<46} {'cold s':>8} {'cold GB/s':>10} {'warm s':>8} {'warm GB/s':>10}")
    results = {}
    for name, fn in rows:
        cold, warm = timed(fn, big, runs, True), timed(fn, big, runs, False)
        results[name] = (cold, warm)
        print(f"{name:<46} {cold:>8.3f} {gb / cold:>10.2f} {warm:>8.3f} {gb / warm:>10.2f}")
    for peer, ours in [
        ("safetensors.torch.load_file(cuda:0)", "larder.load_file(cuda:0) auto"),
        ("safetensors.torch.load_file(cpu)", "larder.load_file(cpu)"),
    ]:
        if peer in results and ours in results:
            (pc, pw), (oc, ow) = results[peer], results[ours]
            print(f"{ours} vs {peer}: cold {pc / oc:.2f}x, warm {pw / ow:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="4G", help="size of the timing checkpoint (e.g. 4G, 512M)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder for the test files (default: a temporary one)")
    ap.add_argument("--cpu-only", action="store_true", help="only the checks that need no GPU")
    args = ap.parse_args()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(float(args.size[:-1]) * units[args.size[-1].upper()]) if args.size[-1].isalpha() else int(args.size)
    probe = larder.cuda_probe(args.dir or tempfile.gettempdir())
    print(json.dumps(probe, indent=2))
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        small = os.path.join(root, "every_dtype.safetensors")
        every_dtype_checkpoint(small)
        cpu_checks(small)
        gpu = not args.cpu_only
        if gpu:
            assert torch.cuda.is_available(), "no GPU for torch: run with --cpu-only"
            assert probe["pinned_usable"], f"larder sees no usable GPU: {probe['unavailable']}"
            gpu_checks(small, probe)
            no_cuda_checks(small)
            loader_checks(root)
        big = os.path.join(root, "big.safetensors")
        big_checkpoint(big, size)
        timings(big, args.runs, gpu)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
