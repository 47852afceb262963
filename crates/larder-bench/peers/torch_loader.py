"""The PyTorch way of serving cached tensors, for `larder bench-load` to compare against.

  setup <store> <out-dir>       write one safetensors file per item of a larder store's
                                `pixels` field, as AI Toolkit's disk cache keeps one file per
                                image (`_latent_cache/<stem>_<hash>.safetensors`)
  run <dir> <batch> <workers>   serve the files with torch.utils.data.DataLoader (shuffle,
                                persistent workers when there are any, pin_memory off) for one
                                epoch; print {"samples", "seconds", "rss_mb", "pss_mb", "anon_mb"} with
                                memory summed over the main process and its workers

The interpreter's start-up and the workers' start are not timed (one warm-up batch).
"""

import json
import os
import sqlite3
import sys
import time

import numpy as np


def setup(store, out):
    from safetensors.numpy import save_file

    os.makedirs(out, exist_ok=True)
    db = sqlite3.connect(os.path.join(store, "catalog.sqlite"))
    rows = db.execute(
        "SELECT f.item, s.file, e.offset, e.length, e.shape FROM item_fields f "
        "JOIN entries e ON e.key = f.entry JOIN shards s ON s.id = e.shard "
        "WHERE f.field = 'pixels' ORDER BY f.item"
    ).fetchall()
    for item, file, offset, length, shape in rows:
        arr = np.fromfile(os.path.join(store, "shards", file), np.uint8, length, offset=offset)
        save_file({"pixels": arr.reshape(json.loads(shape))}, os.path.join(out, f"{item:07d}.safetensors"))
    print(json.dumps({"files": len(rows)}))


def memory(pid):
    """(RSS, PSS, anonymous) of one process in MB, from /proc/<pid>/smaps_rollup."""
    values = {"Rss:": 0.0, "Pss:": 0.0, "Anonymous:": 0.0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split()[0] if line.strip() else ""
                if key in values:
                    values[key] = float(line.split()[1]) / 1024
    except OSError:
        pass
    return values["Rss:"], values["Pss:"], values["Anonymous:"]


def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def run(directory, batch, workers):
    import torch
    from safetensors.torch import load_file

    files = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".safetensors"))

    class Cached(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return load_file(files[i])["pixels"]

    loader = torch.utils.data.DataLoader(
        Cached(), batch_size=batch, shuffle=True, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=False,
    )
    it = iter(loader)
    next(it)  # warm-up: workers started, first batch served
    start = time.perf_counter()
    samples = batch
    for b in it:
        samples += b.shape[0]
    seconds = time.perf_counter() - start
    rss, pss, anon = memory(os.getpid())
    for c in children(os.getpid()):
        r, p, a = memory(c)
        rss, pss, anon = rss + r, pss + p, anon + a
    print(json.dumps({"samples": samples, "seconds": seconds, "rss_mb": rss, "pss_mb": pss, "anon_mb": anon}))


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        setup(sys.argv[2], sys.argv[3])
    else:
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
