"""larder.BatchSizeTuner driving a real DataLoader, against a simulated memory model."""

import pytest

import larder


class Gpu:
    """A step fits when base + batch × per_item fits the budget; it reports its peak."""

    def __init__(self, budget, per_item, base=0):
        self.budget, self.per_item, self.base = budget, per_item, base
        self.last = None

    def step(self, batch):
        need = self.base + len(batch["items"]) * self.per_item
        if need > self.budget:
            raise MemoryError("simulated CUDA out of memory")
        self.last = need
        return need

    def memory(self):
        return (self.last, self.budget)


def test_the_tuner_changes_the_batches_the_loader_serves(store_path):
    gpu = Gpu(budget=10, per_item=1, base=2)  # at most 8 items fit
    loader = larder.DataLoader(store_path, batch_size=1, seed=0, drop_last=True)
    tuner = larder.BatchSizeTuner(loader, initial=16, max=32, grow_after=2, oom_errors=(MemoryError,), memory=gpu.memory)
    sizes, served, failures = [], [], 0
    for batch in loader:
        if tuner.step(gpu.step, batch) is None:
            failures += 1
            continue
        sizes.append(len(batch["items"]))
        served.extend(batch["items"].tolist())
    assert failures >= 1
    assert max(sizes) <= 8, sizes
    assert len(served) == len(set(served)), "no item trained twice"
    reasons = [h[3] for h in tuner.history()]
    assert reasons[0] == "out_of_memory"
    # The state records every change, so a resumed run replays them.
    assert len(loader.state_dict()["history"]) >= 2


def test_warm_up_reaches_the_target(store_path):
    loader = larder.DataLoader(store_path, batch_size=1, seed=0, drop_last=True)
    tuner = larder.BatchSizeTuner(loader, initial=1, target=4, warmup_steps=3, oom_errors=(MemoryError,))
    sizes = []
    for batch in loader:
        tuner.step(lambda b: None, batch)
        sizes.append(len(batch["items"]))
    assert sizes[:4] == [1, 2, 3, 4], sizes


def test_giving_up_is_a_clear_error(store_path):
    loader = larder.DataLoader(store_path, batch_size=1, seed=0)
    tuner = larder.BatchSizeTuner(loader, initial=8, max_consecutive_ooms=2, oom_errors=(MemoryError,))
    gpu = Gpu(budget=0, per_item=1)
    with pytest.raises(larder.ArgumentError, match="in a row"):
        for batch in loader:
            tuner.step(gpu.step, batch)


def test_probe_finds_the_largest_size_and_sets_the_loader(store_path):
    loader = larder.DataLoader(store_path, batch_size=1, seed=0)
    tuner = larder.BatchSizeTuner(loader, max=64, oom_errors=(MemoryError,))
    gpu = Gpu(budget=13, per_item=2, base=1)  # 6 items fit

    def step_at(size):
        gpu.step({"items": [0] * size})

    assert tuner.probe(step_at) == 6
    assert len(next(iter(loader))["items"]) == 6
