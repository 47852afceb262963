"""The Python side of larder's safetensors interop test (tests/integration/interop.rs).

  check <shard> <expected-dir>   open a larder shard with the `safetensors` package and compare
                                 every tensor listed in <expected-dir>/expected.json with the raw
                                 bytes larder read back (<expected-dir>/<n>.bin)
  write <path>                   write a safetensors file from NumPy arrays for larder to read

Exits non-zero with a message on any mismatch.
"""

import json
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def check(shard, expected_dir):
    with open(os.path.join(expected_dir, "expected.json")) as f:
        expected = json.load(f)
    with safe_open(shard, framework="np") as st:
        assert st.metadata().get("format") == "larder-shard/1", st.metadata()
        names = set(st.keys())
        for i, e in enumerate(expected):
            assert e["tensor"] in names, f"{e['tensor']} not in shard"
            got = st.get_tensor(e["tensor"])
            want = np.fromfile(os.path.join(expected_dir, f"{i}.bin"), dtype=np.uint8).reshape(e["shape"])
            assert got.dtype == np.uint8, got.dtype
            assert list(got.shape) == e["shape"], (got.shape, e["shape"])
            assert np.array_equal(got, want), f"{e['tensor']}: values differ"
    print(f"ok: {len(expected)} tensors")


def write(path):
    tensors = {
        "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 8,
        "f16": (np.arange(6, dtype=np.float16) - 3).reshape(2, 3),
        "u8": np.arange(10, dtype=np.uint8),
        "i8": np.array([-128, -1, 0, 1, 127], dtype=np.int8),
    }
    save_file(tensors, path, metadata={"written_by": "python"})
    print("ok")


if __name__ == "__main__":
    {"check": lambda: check(sys.argv[2], sys.argv[3]), "write": lambda: write(sys.argv[2])}[sys.argv[1]]()
