"""Python-side overhead of larder.DataLoader against the Rust loader, on one store.

    python benches/bench_loader.py <store> [--larder target/release/larder] [--batch-size 4]

Serves one epoch three times with each and prints samples/s, the median of three, and the
overhead per batch of the Python layer (goal: at most 10% slower at batch size 4). The Rust
figure comes from `larder bench --json` on the same store, in its own process. With torch
installed, it also serves the epoch with format="torch" (tensors sharing the arrays' memory),
and with --files (the one-safetensors-file-per-item folder `larder bench-load` writes) a
PyTorch DataLoader over those files with 2 persistent workers, as AI Toolkit's disk cache is read.
"""

import argparse
import json
import statistics
import subprocess
import time

import larder


def python_epoch(store, batch_size, threads, fmt="numpy"):
    loader = larder.DataLoader(store, batch_size=batch_size, num_threads=threads, fields=["pixels"], format=fmt)
    start = time.perf_counter()
    samples = sum(len(b["items"]) for b in loader)
    return samples / (time.perf_counter() - start)


def rust_epoch(binary, store, batch_size, threads):
    out = subprocess.run(
        [binary, "bench", store, "--epochs", "1", "--fields", "pixels", "--json",
         "--batch-size", str(batch_size), "--threads", str(threads)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)["samples_per_s"]


def torch_dataloader_epoch(files, batch_size, workers):
    import os

    import torch
    from safetensors.torch import load_file

    paths = sorted(os.path.join(files, f) for f in os.listdir(files) if f.endswith(".safetensors"))

    class Cached(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return load_file(paths[i])["pixels"]

    loader = torch.utils.data.DataLoader(
        Cached(), batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    it = iter(loader)
    samples = len(next(it))  # workers started
    start = time.perf_counter()
    for b in it:
        samples += len(b)
    return (samples - batch_size) / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("--larder", default="target/release/larder")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--files", help="one safetensors file per item, for the PyTorch DataLoader row")
    a = p.parse_args()
    python_epoch(a.store, a.batch_size, a.threads)  # warm the page cache
    rust = statistics.median(rust_epoch(a.larder, a.store, a.batch_size, a.threads) for _ in range(3))
    py = statistics.median(python_epoch(a.store, a.batch_size, a.threads) for _ in range(3))
    print(f"store {a.store}, batch {a.batch_size}, {a.threads} reader threads, one epoch, median of 3")
    print(f"{'contender':<44} {'samples/s':>12}")
    print(f"{'larder bench (Rust)':<44} {rust:>12,.0f}")
    print(f"{'larder.DataLoader (Python, NumPy arrays)':<44} {py:>12,.0f}")
    try:
        import torch  # noqa: F401

        pt = statistics.median(python_epoch(a.store, a.batch_size, a.threads, "torch") for _ in range(3))
        print(f"{'larder.DataLoader (Python, torch tensors)':<44} {pt:>12,.0f}")
        if a.files:
            dl = statistics.median(torch_dataloader_epoch(a.files, a.batch_size, 2) for _ in range(3))
            print(f"{'PyTorch DataLoader, 2 workers, file per item':<44} {dl:>12,.0f}")
            print(f"larder.DataLoader vs PyTorch DataLoader: {py / dl:.1f}x")
    except ImportError:
        print("(torch not installed: the torch rows are left out)")
    per_batch_us = (a.batch_size / py - a.batch_size / rust) * 1e6
    print(f"Python vs Rust: {py / rust:.2f}x ({100 * (1 - py / rust):.1f}% slower, {per_batch_us:.1f} us per batch; goal <= 10% slower)")


if __name__ == "__main__":
    main()
