"""A plain PyTorch training loop fed by larder (runs on a CPU).

    pip install ./bindings/python torch
    cargo run --release -p larder-cli -- prepare examples/sample/config.yaml --out target/sample-store
    python examples/train_loop.py target/sample-store

A tiny convolutional model learns to predict each image's mean color from its pixels; the point
is the data path: deterministic batches of one bucket each, captions transformed per epoch, the
loader's state saved with the checkpoint and restored.
"""

import sys

import torch

import larder

store = sys.argv[1] if len(sys.argv) > 1 else "target/sample-store"
loader = larder.DataLoader(store, batch_size=4, seed=42, format="torch")
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

for epoch in range(3):
    for batch in loader:
        x = batch["pixels"].float() / 127.5 - 1.0  # uint8 (B, 3, H, W) -> [-1, 1], as a VAE expects
        target = x.mean(dim=(2, 3))
        loss = torch.nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: loss {loss.item():.4f}, last bucket {batch['bucket']}, caption {batch['captions'][0]!r}")

checkpoint = {"model": model.state_dict(), "data": loader.state_dict()}
resumed = larder.DataLoader(store, batch_size=4, seed=42, format="torch")
resumed.load_state_dict(checkpoint["data"])
print(f"resumed at epoch {resumed.epoch}, {len(resumed)} batches per epoch")
