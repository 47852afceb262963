"""larder.Metrics: records with the loader's counters, the JSON-lines file, the Prometheus and
dashboard endpoints, and GPU memory through torch."""

import json
import types
import urllib.request
import warnings

import pytest
import torch

import larder
import larder.torch as lt


def steps(metrics, loader, n):
    done = 0
    for batch in loader:
        # A one-element tensor, as a training step's loss is; Metrics reads it with float().
        metrics.step(loss=torch.tensor(1.0 / (done + 1)), lr=1e-4, batch_size=len(batch["items"]))
        done += 1
        if done == n:
            break
    return done


def test_records_go_to_the_file_with_the_loaders_counters(store_path, tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    loader = larder.DataLoader(store_path, batch_size=4, seed=0)
    metrics = larder.Metrics(path, loader=loader, print_every=None, total_steps=len(loader))
    n = steps(metrics, loader, 100)
    metrics.flush()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, n + 1))
    last = records[-1]
    assert last["v"] == 1 and last["total_steps"] == len(loader)
    assert last["samples"] == 24 and last["loss"] == pytest.approx(1.0 / n)
    assert last["bytes_read"] > 24 * 64 * 64 * 3 * 0.5, "pixels of every item were read"
    assert last["batches_assembled"] >= n and last["assemble_s"] > 0
    assert all(r["wait_s"] >= 0 for r in records)
    assert last["rss_bytes"] > 0
    assert "gpu" not in last, "torch is imported but has no CUDA here: no GPU figures"
    assert metrics.last() == last
    assert f"step {n}/{len(loader)}" in metrics.dashboard()


def test_the_counters_carry_on_after_load_state_dict(store_path):
    loader = larder.DataLoader(store_path, batch_size=4, seed=0)
    metrics = larder.Metrics(loader=loader, print_every=None)
    steps(metrics, loader, 2)
    before = metrics.last()["bytes_read"]
    loader.load_state_dict(loader.state_dict())
    steps(metrics, loader, 1)
    assert metrics.last()["bytes_read"] > before, "the rebuilt loader counts into the same metrics"


def test_a_prefetcher_stands_in_for_its_loader(store_path, monkeypatch):
    monkeypatch.setattr(larder, "_NOTICES", set())
    loader = larder.DataLoader(store_path, batch_size=4, seed=0, format="torch")
    prefetcher = lt.CudaPrefetcher(loader, device="cpu")  # no CUDA: batches pass through
    metrics = larder.Metrics(loader=prefetcher, print_every=None)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        steps(metrics, prefetcher, 1)
    assert metrics.last()["bytes_read"] > 0


def test_prometheus_and_dashboard_endpoints(store_path):
    loader = larder.DataLoader(store_path, batch_size=8, seed=0)
    metrics = larder.Metrics(listen="127.0.0.1:0", loader=loader, print_every=None)
    n = steps(metrics, loader, 3)
    assert metrics.address.startswith("http://127.0.0.1:")
    text = urllib.request.urlopen(metrics.address + "/metrics").read().decode()
    assert f"larder_steps_total {n}" in text
    assert "larder_samples_total 24" in text
    assert "larder_loader_read_bytes_total" in text
    page = json.loads(urllib.request.urlopen(metrics.address + "/api/records?since=0").read())
    assert page["next"] == n and [r["step"] for r in page["records"]] == list(range(1, n + 1))


def test_a_real_training_steps_loss_tensor_is_recorded(store_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    batch = next(iter(larder.DataLoader(store_path, batch_size=4, seed=0, format="torch")))
    x = batch["pixels"].float() / 127.5 - 1.0
    loss = torch.nn.functional.mse_loss(model(x), x.mean(dim=(2, 3)))
    loss.backward()
    metrics = larder.Metrics(print_every=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor that requires grad becomes a number
        metrics.step(loss=loss, batch_size=x.shape[0])
    assert metrics.last()["loss"] == pytest.approx(loss.item())
    assert "gpu" not in metrics.last(), "no CUDA on this machine"


def test_gpu_memory_comes_from_torch_cuda_when_cuda_is_available(monkeypatch):
    # The machine running the tests has no GPU, so real torch.cuda's memory queries are
    # answered here as an 80 GiB device would answer them (scripts/gpu_check.py reads a real
    # one); the module, its import and everything else are PyTorch's own.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 20 << 30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 22 << 30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 21 << 30)
    metrics = larder.Metrics(print_every=None)
    metrics.step(loss=torch.tensor(0.5), batch_size=2)
    gpu = metrics.last()["gpu"]
    assert gpu == {"allocated_bytes": 20 << 30, "reserved_bytes": 22 << 30, "peak_bytes": 21 << 30, "total_bytes": 80 << 30}
    assert metrics.last()["loss"] == 0.5
    assert "GPU 20.00 GiB alloc" in metrics.dashboard()


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(larder.ArgumentError, match="print_every"):
        larder.Metrics(print_every=-1.0)
    with pytest.raises(larder.LarderError, match="cannot listen"):
        larder.Metrics(listen="not-an-address", print_every=None)
    with pytest.raises(larder.LarderError):
        larder.Metrics(tmp_path, print_every=None)  # a folder, not a file


def test_close_writes_the_file_and_stops_the_endpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with larder.Metrics(path, listen="127.0.0.1:0", print_every=None) as metrics:
        metrics.step(loss=0.5)
        address = metrics.address
    step, end = [json.loads(line) for line in path.read_text().splitlines()]
    assert step["loss"] == 0.5 and "event" not in step
    # The last record says the run ended, for larder dashboard.
    assert end["event"] == "end" and end["step"] == 1
    with pytest.raises(OSError):
        urllib.request.urlopen(address + "/metrics", timeout=5)
    with pytest.raises(larder.LarderError, match="closed"):
        metrics.step(loss=0.1)
