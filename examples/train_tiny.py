"""Train a tiny denoiser on the sample store with every larder helper at once.

    pip install ./bindings/python torch
    python examples/train_tiny.py [store] [--epochs 4] [--listen 127.0.0.1:9100]

A few convolutions learn to remove Gaussian noise from the sample images' pixels (shrunk to an
eighth of their size, so that a CPU trains it in well under a minute). What the example shows is
the training loop around it:

- ``larder.DataLoader`` serves the store (prepared from examples/sample/config.yaml first if
  the folder does not exist), one bucket per batch, as torch tensors;
- ``larder.torch.CudaPrefetcher`` copies the next two batches to the GPU while one trains (on a
  machine without CUDA it passes batches through and says so once);
- ``larder.BatchSizeTuner`` warms the batch size up from 1 to 4, and would back off on a CUDA
  out-of-memory error, serving the failed step's items again;
- ``larder.Metrics`` writes target/train_tiny/metrics.jsonl (plot it live with
  ``larder dashboard target/train_tiny/metrics.jsonl``), prints the terminal dashboard every
  10 seconds, and with ``--listen`` serves Prometheus ``/metrics`` and the dashboard page.
"""

import argparse
import os
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("examples/train_tiny.py needs PyTorch, which is not installed: pip install torch. Skipped.", file=sys.stderr)
    sys.exit(0)

import larder
import larder.torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def denoiser() -> torch.nn.Module:
    """Predicts the noise in an image; four 3x3 convolutions, about 20k parameters."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(32, 3, 3, padding=1),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Train a tiny denoiser with larder's helpers.")
    parser.add_argument("store", nargs="?", default=os.path.join(ROOT, "target", "sample-store"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--listen", help="serve /metrics and the dashboard here, e.g. 127.0.0.1:9100")
    parser.add_argument("--metrics", default=os.path.join(ROOT, "target", "train_tiny", "metrics.jsonl"))
    args = parser.parse_args()

    started = time.perf_counter()
    if not os.path.isdir(args.store):
        print(f"preparing the sample dataset into {args.store}")
        larder.prepare(os.path.join(ROOT, "examples", "sample", "config.yaml"), args.store)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = denoiser().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

    loader = larder.DataLoader(args.store, batch_size=1, seed=0, fields=["pixels"], format="torch", pin_memory=device.type == "cuda")
    batches = larder.torch.CudaPrefetcher(loader, depth=2, device=device)
    tuner = larder.BatchSizeTuner(batches, initial=1, target=4, warmup_steps=12, max=8)
    if os.path.exists(args.metrics):
        os.remove(args.metrics)  # one run per file: the dashboard plots this run only
    metrics = larder.Metrics(args.metrics, listen=args.listen, loader=loader, print_every=10.0)
    if metrics.address:
        print(f"metrics: {metrics.address}/metrics; dashboard: {metrics.address}/ or `larder dashboard {metrics.address}`")

    def train_step(batch):
        pixels = batch["pixels"].to(device).float() / 127.5 - 1.0
        x = F.interpolate(pixels, scale_factor=0.125, mode="area")
        sigma = torch.rand(x.shape[0], 1, 1, 1, device=device) * 0.4 + 0.05
        noise = torch.randn_like(x)
        loss = F.mse_loss(model(x + sigma * noise), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    first = last = None
    for epoch in range(args.epochs):
        losses = []
        for batch in batches:
            loss = tuner.step(train_step, batch)
            if loss is None:  # out of memory: the tuner shrank the batch; its items come again
                continue
            losses.append(loss)
            metrics.step(loss=loss, lr=optimizer.param_groups[0]["lr"], batch_size=batch["pixels"].shape[0])
        mean = sum(losses) / len(losses)
        first = mean if first is None else first
        last = mean
        print(f"epoch {epoch}: {len(losses)} steps, mean loss {mean:.4f}, batch size now {tuner.batch_size}")

    metrics.flush()
    record = metrics.last()
    print(metrics.dashboard(), end="")
    print(f"loss {first:.4f} -> {last:.4f} over {args.epochs} epochs; {record['step']} steps, {record['samples']} samples")
    print(f"batch sizes: {' '.join(f'{a}->{b}' for _, a, b, _ in tuner.history())}")
    print(f"metrics: {args.metrics} ({record['step']} records)")
    print(f"done in {time.perf_counter() - started:.1f} s on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
