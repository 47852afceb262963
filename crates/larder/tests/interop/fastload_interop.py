"""The Python `safetensors` package's side of the fastload interop tests.

    write DIR   writes files with the reference writer (every dtype, empty and scalar tensors,
                metadata, a sharded checkpoint with its index) and DIR/manifest.json
    dump FILE   prints what the reference reader finds in FILE, as the same manifest format

A manifest maps file -> {"metadata": {...}, "tensors": {name: {dtype, shape, hex}}}.
"""

import json
import os
import sys

import numpy as np
from safetensors import TensorSpec, deserialize, safe_open, serialize_file

# (safetensors dtype, the writer's name for it, bytes per element)
DTYPES = [
    ("BOOL", "bool", 1),
    ("U8", "uint8", 1),
    ("I8", "int8", 1),
    ("F8_E4M3", "float8_e4m3fn", 1),
    ("F8_E5M2", "float8_e5m2", 1),
    ("I16", "int16", 2),
    ("U16", "uint16", 2),
    ("F16", "float16", 2),
    ("BF16", "bfloat16", 2),
    ("I32", "int32", 4),
    ("U32", "uint32", 4),
    ("F32", "float32", 4),
    ("I64", "int64", 8),
    ("U64", "uint64", 8),
    ("F64", "float64", 8),
]
SHAPES = [[], [0], [7], [3, 5], [2, 0, 4], [2, 3, 4]]


def write(path, tensors, metadata):
    """tensors: {name: (writer dtype, shape, bytes)}"""
    keep = {k: np.frombuffer(v[2], np.uint8).copy() if v[2] else np.zeros(1, np.uint8) for k, v in tensors.items()}
    specs = {
        k: TensorSpec(dtype=d, shape=s, data_ptr=keep[k].ctypes.data, data_len=len(b))
        for k, (d, s, b) in tensors.items()
    }
    serialize_file(specs, path, metadata=metadata)


def main():
    if sys.argv[1] == "write":
        out = sys.argv[2]
        rng = np.random.default_rng(7)
        manifest = {}
        tensors, entries = {}, {}
        for i, (name, writer, size) in enumerate(DTYPES):
            for j, shape in enumerate(SHAPES):
                n = int(np.prod(shape)) * size
                data = rng.integers(0, 256, n, dtype=np.uint8)
                if name == "BOOL":
                    data = data % 2
                key = f"t.{name.lower()}.{j}"
                tensors[key] = (writer, shape, data.tobytes())
                entries[key] = {"dtype": name, "shape": shape, "hex": data.tobytes().hex()}
        meta = {"format": "pt", "note": "every dtype"}
        write(os.path.join(out, "all.safetensors"), tensors, meta)
        manifest["all.safetensors"] = {"metadata": meta, "tensors": entries}
        # A sharded checkpoint: two files and an index, as Hugging Face writes them.
        os.makedirs(os.path.join(out, "sharded"), exist_ok=True)
        weight_map = {}
        for part in (1, 2):
            fname = f"model-{part:05d}-of-00002.safetensors"
            ts, es = {}, {}
            for k in range(3):
                data = rng.integers(0, 256, 64 * part + k, dtype=np.uint8).tobytes()
                key = f"layers.{part}.{k}"
                ts[key] = ("uint8", [len(data)], data)
                es[key] = {"dtype": "U8", "shape": [len(data)], "hex": data.hex()}
                weight_map[key] = fname
            write(os.path.join(out, "sharded", fname), ts, None)
            manifest[f"sharded/{fname}"] = {"metadata": {}, "tensors": es}
        with open(os.path.join(out, "sharded", "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 393}, "weight_map": weight_map}, f)
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump(manifest, f)
    elif sys.argv[1] == "dump":
        path = sys.argv[2]
        with open(path, "rb") as f:
            flat = deserialize(f.read())
        with safe_open(path, "np") as f:
            metadata = f.metadata() or {}
        tensors = {
            name: {"dtype": t["dtype"], "shape": list(t["shape"]), "hex": bytes(t["data"]).hex()} for name, t in flat
        }
        print(json.dumps({"metadata": metadata, "tensors": tensors}))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
