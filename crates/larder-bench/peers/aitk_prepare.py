"""AI Toolkit's pixel path, for `larder bench-prepare` to compare against.

What AI Toolkit does per image when it caches pixels (toolkit/dataloader_mixins.py,
load_and_process_image): PIL open, exif_transpose, convert("RGB"), resize BICUBIC to the
bucket's scale-to size, crop; here the uint8 array (C, H, W) is saved as one safetensors file
per image, in a pool of worker processes as a DataLoader with workers would.

Usage: aitk_prepare.py <image-folder> <out-folder> <resolution> <divisibility> <processes>
Prints one JSON object: {"items", "seconds"}. The interpreter's start-up is not timed.
"""

import json
import math
import os
import sys
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageOps
from safetensors.numpy import save_file


def bucket(width, height, resolution, d):
    # AI Toolkit's get_bucket_for_image_size (toolkit/buckets.py).
    total = width * height
    max_pixels = resolution * resolution
    target = min(total, max_pixels)
    scaler = (target / total) ** 0.5
    w_raw = (width * scaler) / d
    h_raw = (height * scaler) / d
    f, c = math.floor, math.ceil
    cands = [(f(w_raw) * d, f(h_raw) * d), (f(w_raw) * d, c(h_raw) * d),
             (c(w_raw) * d, f(h_raw) * d), (c(w_raw) * d, c(h_raw) * d)]
    capped = [(w, h) for (w, h) in cands if w > 0 and h > 0 and w * h <= max_pixels]
    if not capped:
        capped = [(max(d, f(w_raw) * d), max(d, f(h_raw) * d))]
    return min(capped, key=lambda x: abs(x[0] * x[1] - target))


def aitk_pixels(path, resolution, d):
    """AI Toolkit's default pixel path for one image: open, orient, RGB, bucket, resize, crop.
    Returns the image and its geometry: (scaled width, scaled height, crop x, crop y, bucket
    width, bucket height)."""
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = img.size
    bw, bh = bucket(w, h, resolution, d)
    m = max(bw / w, bh / h)
    sw, sh = int(math.ceil(w * m)), int(math.ceil(h * m))
    cx, cy = int((sw - bw) / 2), int((sh - bh) / 2)
    img = img.resize((sw, sh), Image.BICUBIC).crop((cx, cy, cx + bw, cy + bh))
    return img, (sw, sh, cx, cy, bw, bh)


def process(job):
    path, out, resolution, d = job
    img, _ = aitk_pixels(path, resolution, d)
    arr = np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))
    stem = os.path.splitext(os.path.basename(path))[0]
    save_file({"pixels": arr}, os.path.join(out, stem + ".safetensors"))
    return 1


def main():
    folder, out, resolution, d, procs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    os.makedirs(out, exist_ok=True)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg")))
    start = time.perf_counter()
    with Pool(procs) as pool:
        n = sum(pool.map(process, [(f, out, resolution, d) for f in files], chunksize=8))
    print(json.dumps({"items": n, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
