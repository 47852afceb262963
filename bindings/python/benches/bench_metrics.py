"""What larder.Metrics.step costs a Python training loop, per step.

    python benches/bench_metrics.py [--steps 100000] [--larder target/release/larder]

Times ``metrics.step(loss=..., lr=..., batch_size=...)`` with each set of outputs (median of
five runs), next to an empty Python call as the floor, and, with ``--larder``, the Rust-only
figures of ``larder bench-metrics`` on the same machine. Goal: under 50 µs a step.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import larder


def per_step_us(make, steps):
    runs = []
    for _ in range(5):
        metrics = make()
        start = time.perf_counter()
        for k in range(steps):
            metrics.step(loss=1.0 / (k + 1), lr=1e-4, batch_size=16)
        runs.append((time.perf_counter() - start) / steps * 1e6)
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--larder", help="a larder binary, for the Rust-only figures")
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "metrics.jsonl")

    def noop(loss=None, lr=None, batch_size=None):
        pass

    class Empty:
        step = staticmethod(noop)

    rows = [
        ("empty Python call (floor)", per_step_us(Empty, args.steps)),
        ("larder.Metrics: record only", per_step_us(lambda: larder.Metrics(print_every=None), args.steps)),
        ("+ JSON lines", per_step_us(lambda: larder.Metrics(path, print_every=None), args.steps)),
        ("+ JSON lines, endpoint, terminal each second", per_step_us(lambda: larder.Metrics(path, listen="127.0.0.1:0", print_every=1.0), args.steps)),
    ]
    print(f"larder.Metrics.step per step (median of 5 runs of {args.steps} steps; goal < 50 µs)")
    for name, us in rows:
        print(f"  {name:<48} {us:8.2f} µs")
    if args.larder:
        out = subprocess.run([args.larder, "bench-metrics", "--json", "--steps", str(args.steps)], check=True, capture_output=True, text=True)
        for row in json.loads(out.stdout)["rows"]:
            print(f"  rust: {row['outputs']:<42} {row['us_per_step']:8.2f} µs")


if __name__ == "__main__":
    main()
