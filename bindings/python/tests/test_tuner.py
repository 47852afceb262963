"""larder.BatchSizeTuner driving a real DataLoader and real PyTorch training steps on the CPU.

A CPU has no GPU memory to run out of, so the model below raises the real
``torch.cuda.OutOfMemoryError`` (the class exists without CUDA) when a batch is larger than its
budget, as a GPU of that size would; everything else — the tensors, the backward pass, the
optimizer, the tuner's default choice of out-of-memory errors — is PyTorch's own.
"""

import pytest
import torch

import larder


class Budgeted(torch.nn.Module):
    """A tiny convolutional model that "runs out of GPU memory" above ``fits`` images."""

    def __init__(self, fits):
        super().__init__()
        self.fits = fits
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)
        )
        self.peak = None

    def forward(self, x):
        if x.shape[0] > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} images; {self.fits} fit")
        self.peak = x.shape[0]
        return self.net(x)


def trainer(fits):
    torch.manual_seed(0)
    model = Budgeted(fits)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(batch):
        x = batch["pixels"].float() / 127.5 - 1.0
        loss = torch.nn.functional.mse_loss(model(x), x.mean(dim=(2, 3)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return model, step


def test_the_default_oom_errors_are_torchs(store_path):
    tuner = larder.BatchSizeTuner(larder.DataLoader(store_path), initial=2)
    assert torch.cuda.OutOfMemoryError in tuner._oom and MemoryError in tuner._oom


def test_the_tuner_changes_the_batches_the_loader_serves(store_path):
    model, step = trainer(fits=8)
    loader = larder.DataLoader(store_path, batch_size=1, seed=0, drop_last=True, format="torch")
    # The memory figure the tuner grows by: images in the last step, out of a budget of 10.
    tuner = larder.BatchSizeTuner(loader, initial=16, max=32, grow_after=2, memory=lambda: (model.peak, 10))
    sizes, served, failures = [], [], 0
    for batch in loader:
        loss = tuner.step(step, batch)
        if loss is None:
            failures += 1
            continue
        assert isinstance(loss, float)
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
    _, step = trainer(fits=64)
    loader = larder.DataLoader(store_path, batch_size=1, seed=0, drop_last=True, format="torch")
    tuner = larder.BatchSizeTuner(loader, initial=1, target=4, warmup_steps=3)
    sizes = []
    for batch in loader:
        tuner.step(step, batch)
        sizes.append(len(batch["items"]))
    assert sizes[:4] == [1, 2, 3, 4], sizes


def test_giving_up_is_a_tuner_exhausted_error_caused_by_the_last_oom(store_path):
    _, step = trainer(fits=0)
    loader = larder.DataLoader(store_path, batch_size=1, seed=0, format="torch")
    tuner = larder.BatchSizeTuner(loader, initial=8, max_consecutive_ooms=2)
    with pytest.raises(larder.TunerExhaustedError, match="in a row") as caught:
        for batch in loader:
            tuner.step(step, batch)
    assert isinstance(caught.value, larder.LarderError) and isinstance(caught.value, RuntimeError)
    assert not isinstance(caught.value, ValueError), "not a bad argument: the model does not fit"
    assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)


def test_an_oom_at_the_smallest_size_gives_up_at_once(store_path):
    _, step = trainer(fits=0)
    loader = larder.DataLoader(store_path, batch_size=1, seed=0, format="torch")
    tuner = larder.BatchSizeTuner(loader, initial=1, max_consecutive_ooms=5)
    with pytest.raises(larder.TunerExhaustedError, match="last at batch size 1"):
        tuner.step(step, next(iter(loader)))


def test_probe_finds_the_largest_size_and_sets_the_loader(store_path):
    model, _ = trainer(fits=6)
    loader = larder.DataLoader(store_path, batch_size=1, seed=0)
    tuner = larder.BatchSizeTuner(loader, max=64)

    def step_at(size):
        model(torch.zeros(size, 3, 8, 8)).sum().backward()

    assert tuner.probe(step_at) == 6
    assert len(next(iter(loader))["items"]) == 6


def test_probe_gives_up_when_even_the_smallest_size_does_not_fit(store_path):
    model, _ = trainer(fits=0)
    tuner = larder.BatchSizeTuner(larder.DataLoader(store_path, batch_size=1), max=8)
    with pytest.raises(larder.TunerExhaustedError, match="even the smallest batch size 1") as caught:
        tuner.probe(lambda size: model(torch.zeros(size, 3, 8, 8)))
    assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)
