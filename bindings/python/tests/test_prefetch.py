"""larder.torch.CudaPrefetcher: its CUDA side-stream path against a stand-in for torch.cuda, its
CPU path against real PyTorch.

The stand-in (``fake_torch``) is the one fake torch the test suite allows, and only for the path
that needs a GPU: CI has none, and real ``torch.cuda.Stream``/``Event`` cannot even be made
without one. It records streams, events and copies, so the prefetcher's semantics — what is
copied, on which stream, what the consumer waits for, how far ahead it fetches, when host memory
is let go, errors and exhaustion — are checked here, and scripts/gpu_check.py runs the same
path on a real GPU. Everything without CUDA runs on real torch.
"""

import gc
import sys
import types
import weakref

import numpy as np
import pytest
import torch

import larder
import larder.torch as lt

# The real class, taken before any test swaps the stand-in into sys.modules["torch"].
OutOfMemoryError = torch.cuda.OutOfMemoryError


class Tensor:
    def __init__(self, name, device="cpu", stream=None, non_blocking=None, array=None):
        self.name, self.device, self.stream, self.non_blocking = name, device, stream, non_blocking
        self.array = array
        self.recorded = []

    def to(self, device, non_blocking=False):
        return Tensor(self.name, str(device), FakeCuda.current, non_blocking, self.array)

    def record_stream(self, stream):
        self.recorded.append(stream)

    def view(self, dtype):
        return Tensor(f"{self.name}:{dtype}", self.device)


class Stream:
    def __init__(self, name):
        self.name = name
        self.waited = []

    def wait_event(self, event):
        self.waited.append(event)


class Event:
    made = []

    def __init__(self):
        self.stream = None
        self.done = False
        Event.made.append(self)

    def record(self, stream):
        self.stream = stream

    def query(self):
        return self.done


class Device:
    def __init__(self, name):
        self.name = str(name)
        self.type = self.name.split(":")[0]

    def __str__(self):
        return self.name


class FakeCuda:
    current = None
    consumer = Stream("consumer")

    def __init__(self, available):
        self.available = available
        self.Event = Event

    def is_available(self):
        return self.available

    # What the batch-size tuner calls around each step.
    def reset_peak_memory_stats(self):
        pass

    def empty_cache(self):
        pass

    def Stream(self, device=None):
        return Stream("side")

    def current_stream(self, device=None):
        return FakeCuda.consumer

    def stream(self, stream):
        cuda = self

        class Context:
            def __enter__(self):
                cuda.previous, FakeCuda.current = FakeCuda.current, stream

            def __exit__(self, *exc):
                FakeCuda.current = cuda.previous

        return Context()


@pytest.fixture
def fake_torch(monkeypatch):
    """Puts the stand-in for torch (with CUDA) in sys.modules["torch"] for one test."""

    def install(available=True):
        Event.made = []
        FakeCuda.consumer = Stream("consumer")
        FakeCuda.current = FakeCuda.consumer
        torch = types.SimpleNamespace(
            Tensor=Tensor,
            cuda=FakeCuda(available),
            device=Device,
            from_numpy=lambda a: Tensor(f"array{a.shape}", array=a),
            bfloat16="bfloat16",
            float16="float16",
            bool="bool",
        )
        monkeypatch.setitem(sys.modules, "torch", torch)
        monkeypatch.setattr(larder, "_NOTICES", set())
        return torch

    return install


class Source:
    """Batches 0..n-1; ``fail`` positions raise instead. Like larder.DataLoader, iterating
    again after an error goes on with the next batch."""

    def __init__(self, n, fail=(), make=None):
        self.n, self.fail, self.pos, self.pulled = n, set(fail), 0, 0
        self.make = make or (lambda k: {"x": Tensor(f"x{k}"), "k": k})

    def __len__(self):
        return self.n

    def __iter__(self):
        while self.pos < self.n:
            k = self.pos
            self.pos += 1
            self.pulled += 1
            if k in self.fail:
                raise RuntimeError(f"batch {k} is broken")
            yield self.make(k)


def test_every_tensor_is_copied_on_the_side_stream_and_the_consumer_waits_for_it(fake_torch):
    fake_torch()

    def make(k):
        return {
            "latent": Tensor(f"latent{k}"),
            "nested": {"mask": Tensor(f"mask{k}"), "controls": [Tensor(f"c{k}"), "keep"]},
            "pair": (Tensor(f"p{k}"), 7),
            "pixels": np.zeros((2, 3, 4, 4), dtype=np.uint8),
            "captions": ["a cat", "a dog"],
        }

    out = list(lt.CudaPrefetcher(Source(3, make=make), depth=2))
    assert len(out) == 3
    for k, batch in enumerate(out):
        tensors = [batch["latent"], batch["nested"]["mask"], batch["nested"]["controls"][0], batch["pair"][0], batch["pixels"]]
        for t in tensors:
            assert t.device == "cuda" and t.non_blocking is True
            assert t.stream.name == "side", "copied on the side stream"
            assert t.recorded == [FakeCuda.consumer], "marked as used by the consuming stream"
        assert batch["latent"].name == f"latent{k}"
        assert batch["nested"]["controls"][1] == "keep" and batch["pair"][1] == 7
        assert batch["captions"] == ["a cat", "a dog"]
        assert isinstance(batch["pair"], tuple)
    # The consumer waited for each batch's own copies, in order, each recorded on the side stream.
    assert FakeCuda.consumer.waited == Event.made
    assert all(e.stream.name == "side" for e in Event.made)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_batches_come_in_order_with_depth_batches_fetched_ahead(fake_torch, depth):
    fake_torch()
    source = Source(6)
    seen = []
    for k, batch in enumerate(lt.CudaPrefetcher(source, depth=depth)):
        # While batch k trains, batches k+1 .. k+depth are already being copied.
        assert source.pulled == min(k + 1 + depth, 6)
        seen.append(batch["k"])
    assert seen == list(range(6))


def test_short_and_empty_loaders_end_cleanly(fake_torch):
    fake_torch()
    assert [b["k"] for b in lt.CudaPrefetcher(Source(1), depth=4)] == [0]
    assert list(lt.CudaPrefetcher(Source(0), depth=2)) == []
    assert len(lt.CudaPrefetcher(Source(5))) == 5


def test_a_loader_error_comes_at_its_batch_and_nothing_after_it_is_fetched(fake_torch):
    fake_torch()
    source = Source(5, fail={2})
    prefetcher = lt.CudaPrefetcher(source, depth=3)
    seen = []
    with pytest.raises(RuntimeError, match="batch 2 is broken"):
        for batch in prefetcher:
            seen.append(batch["k"])
    assert seen == [0, 1]
    assert source.pulled == 3, "no batch after the failed one was taken from the loader"
    assert [b["k"] for b in prefetcher] == [3, 4], "iterating again goes on after it"


def test_host_batches_are_released_only_once_their_copies_are_done(fake_torch):
    fake_torch()

    class HostBatch(dict):
        pass

    made = []

    def make(k):
        batch = HostBatch(x=Tensor(f"x{k}"), k=k)
        made.append(weakref.ref(batch))
        return batch

    it = iter(lt.CudaPrefetcher(Source(4, make=make), depth=1))
    next(it)
    next(it)
    gc.collect()
    assert made[0]() is not None, "batch 0's copy is not done: its host memory is kept"
    Event.made[0].done = True
    next(it)
    gc.collect()
    assert made[0]() is None, "released once its copy finished"


def test_without_cuda_batches_pass_through_with_one_notice(monkeypatch, store_path):
    # Real torch on a machine without CUDA.
    assert not torch.cuda.is_available()
    monkeypatch.setattr(larder, "_NOTICES", set())
    loader = larder.DataLoader(store_path, batch_size=4, seed=0, format="torch")
    prefetcher = lt.CudaPrefetcher(loader, depth=2)
    with pytest.warns(UserWarning, match="CUDA is not available") as caught:
        first = list(prefetcher)
    second = list(prefetcher)
    assert len([w for w in caught if "CudaPrefetcher" in str(w.message)]) == 1
    assert len(first) == len(second) == 6
    assert all(isinstance(b["pixels"], torch.Tensor) and b["pixels"].device.type == "cpu" for b in first), "unchanged: no copy"
    assert sorted(i for b in first for i in b["items"].tolist()) == list(range(24))


def test_without_torch_batches_pass_through(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    monkeypatch.setattr(larder, "_NOTICES", set())
    batch = {"x": np.zeros(2)}
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert list(lt.CudaPrefetcher([batch])) == [batch]


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth must be at least 1"):
        lt.CudaPrefetcher([], depth=0)


def test_the_tuner_through_the_prefetcher_serves_each_item_once_at_the_new_size(fake_torch, store_path):
    fake_torch()
    loader = larder.DataLoader(store_path, batch_size=1, seed=0, drop_last=True)
    batches = lt.CudaPrefetcher(loader, depth=2)
    tuner = larder.BatchSizeTuner(batches, initial=8, max=8, oom_errors=(OutOfMemoryError,), memory=lambda: None)

    def step(batch):
        if len(batch["items"].array) > 5:  # the stand-in GPU holds 5 items
            raise OutOfMemoryError("CUDA out of memory")
        return "trained"

    served, sizes = [], []
    for batch in batches:
        items = batch["items"].array.tolist()
        assert batch["items"].device == "cuda"
        if tuner.step(step, batch) is None:
            continue
        served.extend(items)
        sizes.append(len(items))
        if len(sizes) == 2:
            break
    # 8 does not fit, nor 6; 4 does. The batches fetched ahead at 8 were dropped: the very
    # next batch had the new size.
    assert sizes == [4, 4]
    assert loader.state_dict()["consumed"] > batches.state_dict()["consumed"], "the loader is ahead"

    # The prefetcher's position is after the batches handed out: a run resumed from it serves
    # exactly the items not trained on yet.
    resumed = larder.DataLoader(store_path, batch_size=4, seed=0, drop_last=True)
    resumed.load_state_dict(batches.state_dict())
    rest = [i for b in resumed for i in b["items"].tolist()]
    assert len(served) + len(rest) == 24
    assert sorted(served + rest) == sorted(set(served + rest)), "no item twice"


def test_an_iteration_left_early_loses_no_batch(fake_torch, store_path):
    fake_torch()
    plain = [b["items"].tolist() for b in larder.DataLoader(store_path, batch_size=4, seed=0)]
    batches = lt.CudaPrefetcher(larder.DataLoader(store_path, batch_size=4, seed=0), depth=2)
    seen = []
    for batch in batches:
        seen.append(batch["items"].array.tolist())
        if len(seen) == 2:
            break
    seen += [b["items"].array.tolist() for b in batches]
    assert seen == plain, "the batches fetched ahead come first when iterating again"
