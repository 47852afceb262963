"""larder.torch.as_tensors, checked against a stand-in for torch that records its calls.

The test suite does not install PyTorch (several GB); this checks the wiring — which arrays
become tensors, which are viewed as bfloat16 — without it. The GPU check script runs the real
thing.
"""

import sys
import types

import numpy as np
import pytest

import larder.torch as lt


class FakeTensor:
    def __init__(self, array, dtype="from_numpy"):
        self.array = array
        self.dtype = dtype

    def view(self, dtype):
        return FakeTensor(self.array, dtype)


def test_as_tensors_shares_memory_and_views_bfloat16(monkeypatch):
    fake = types.SimpleNamespace(
        from_numpy=lambda a: FakeTensor(a),
        bfloat16="bfloat16",
        float16="float16",
        bool="bool",
    )
    monkeypatch.setitem(sys.modules, "torch", fake)
    pixels = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    latent = np.zeros((2, 16, 8, 8), dtype=np.uint16)
    mask = np.zeros((2, 7), dtype=np.uint8)
    batch = {"pixels": pixels, "latent": latent, "text.mask": mask, "captions": ["a", "b"],
             "dtypes": {"pixels": "U8", "latent": "BF16", "text.mask": "BOOL"}}
    out = lt.as_tensors(batch)
    # Attention masks of text embeddings become torch.bool views.
    assert out["text.mask"].array is mask and out["text.mask"].dtype == "bool"
    assert out["pixels"].array is pixels and out["pixels"].dtype == "from_numpy"
    assert out["latent"].array is latent and out["latent"].dtype == "bfloat16"
    assert out["captions"] == ["a", "b"]


def test_iterating_inside_a_torch_dataloader_worker_raises(monkeypatch, store_path):
    # A torch.utils.data.DataLoader worker iterates the whole loader it is given: with N
    # workers every batch would be served N times. torch's own get_worker_info says whether
    # this process is such a worker; PyTorch is not installed here (several GB with its CUDA
    # packages), so a stand-in for torch.utils.data answers as torch does.
    import larder

    loader = larder.DataLoader(store_path, batch_size=4)
    worker = types.SimpleNamespace(id=1, num_workers=2)
    data = types.SimpleNamespace(get_worker_info=lambda: None)
    monkeypatch.setitem(sys.modules, "torch.utils.data", data)
    assert len(next(iter(loader))["items"]) == 4, "the training process itself iterates freely"
    data.get_worker_info = lambda: worker
    with pytest.raises(larder.LarderError, match=r"worker 1 of 2 of a torch.utils.data.DataLoader.*num_workers=0"):
        next(iter(loader))


def test_the_worker_check_imports_nothing(store_path):
    import subprocess

    code = (
        "import sys, larder\n"
        f"batch = next(iter(larder.DataLoader({str(store_path)!r}, batch_size=2)))\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
