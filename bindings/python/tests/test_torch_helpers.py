"""larder.torch.as_tensors, format="torch" batches, and the torch DataLoader worker check, against
real PyTorch on the CPU (scripts/requirements-test.txt pins it; CI has no GPU and needs none)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.utils.data

import larder
import larder.torch as lt


def test_as_tensors_shares_memory_and_views_bfloat16_float16_and_bool():
    pixels = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    # bfloat16 1.0 and -2.0 are the high halves of the float32 bit patterns.
    latent = np.array([[0x3F80, 0xC000]], dtype=np.uint16)
    half = np.array([0.5, -1.25], dtype=np.float16)
    mask = np.array([[1, 0, 1]], dtype=np.uint8)
    batch = {"pixels": pixels, "latent": latent, "embeds": half, "text.mask": mask, "captions": ["a", "b"],
             "dtypes": {"pixels": "U8", "latent": "BF16", "embeds": "F16", "text.mask": "BOOL"}}
    out = lt.as_tensors(batch)
    assert out["pixels"].dtype == torch.uint8 and out["pixels"].data_ptr() == pixels.ctypes.data, "no copy"
    assert torch.equal(out["pixels"], torch.from_numpy(pixels.copy()))
    assert out["latent"].dtype == torch.bfloat16 and out["latent"].data_ptr() == latent.ctypes.data
    assert out["latent"].float().tolist() == [[1.0, -2.0]]
    assert out["embeds"].dtype == torch.float16 and out["embeds"].tolist() == [0.5, -1.25]
    assert out["text.mask"].dtype == torch.bool and out["text.mask"].tolist() == [[True, False, True]]
    assert out["captions"] == ["a", "b"]


def test_format_torch_batches_are_the_numpy_batches_as_tensors(store_path):
    as_numpy = list(larder.DataLoader(store_path, batch_size=4, seed=3))
    as_torch = list(larder.DataLoader(store_path, batch_size=4, seed=3, format="torch"))
    assert len(as_torch) == len(as_numpy) == 6
    for n, t in zip(as_numpy, as_torch):
        assert isinstance(t["pixels"], torch.Tensor) and t["pixels"].dtype == torch.uint8
        assert t["pixels"].shape == n["pixels"].shape and t["pixels"].shape[1] == 3
        assert torch.equal(t["pixels"], torch.from_numpy(n["pixels"]))
        assert t["items"].tolist() == n["items"].tolist() and t["captions"] == n["captions"]
    # A real CPU step reads them: the uint8 pixels become a float input.
    x = as_torch[0]["pixels"].float() / 127.5 - 1.0
    assert -1.0 <= x.min().item() and x.max().item() <= 1.0


class Wrapped(torch.utils.data.IterableDataset):
    """What a framework that insists on a torch DataLoader gets: the larder loader inside an
    IterableDataset."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


def test_iterating_inside_a_torch_dataloader_worker_raises_in_the_parent(store_path):
    # A torch.utils.data.DataLoader worker iterates the whole loader it is given: with N
    # workers every batch would be served N times. The worker raises, and torch re-raises the
    # error in the training process with the worker's message.
    loader = larder.DataLoader(store_path, batch_size=4)
    # fork, as on Linux by default: the larder loader is not picklable, so a spawned worker
    # could not receive it at all.
    workers = torch.utils.data.DataLoader(Wrapped(loader), num_workers=2, batch_size=None, multiprocessing_context="fork")
    with pytest.raises(larder.LarderError, match=r"worker [01] of 2 of a torch.utils.data.DataLoader.*num_workers=0"):
        next(iter(workers))


def test_num_workers_0_serves_each_batch_once(store_path):
    # What the error tells the user to do instead: the same wrapper with num_workers=0.
    loader = larder.DataLoader(store_path, batch_size=4, format="torch")
    batches = list(torch.utils.data.DataLoader(Wrapped(loader), num_workers=0, batch_size=None))
    items = [i for b in batches for i in b["items"].tolist()]
    assert sorted(items) == list(range(24)), "every item once"
    assert isinstance(batches[0]["pixels"], torch.Tensor)


def test_the_worker_check_imports_nothing(store_path):
    code = (
        "import sys, larder\n"
        f"batch = next(iter(larder.DataLoader({str(store_path)!r}, batch_size=2)))\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
