"""Test data for the bindings: small PNG datasets written with the standard library."""

import os
import struct
import zlib

import numpy as np
import pytest


def write_png(path, width, height, seed):
    """Writes an RGB PNG whose pixels are a function of ``seed``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_dataset(root, n=24):
    """A folder of ``n`` images in three buckets with captions, and its config."""
    images = os.path.join(root, "imgs")
    os.makedirs(images, exist_ok=True)
    for i in range(n):
        w, h = [(64, 64), (96, 64), (64, 96)][i % 3]
        write_png(os.path.join(images, f"img{i:03d}.png"), w, h, i)
        with open(os.path.join(images, f"img{i:03d}.txt"), "w") as f:
            f.write(f"tag{i}, red, blue")
    config = os.path.join(root, "config.yaml")
    with open(config, "w") as f:
        f.write("datasets:\n  - folder_path: imgs\n    resolution: 64\n    shuffle_tokens: true\n")
    return config


@pytest.fixture(scope="session")
def store_path(tmp_path_factory):
    """A prepared store of 24 items, shared by the tests that only read it."""
    import larder

    root = str(tmp_path_factory.mktemp("data"))
    config = make_dataset(root)
    out = os.path.join(root, "store")
    larder.prepare(config, out, shard_bytes=64 << 10)
    return out
