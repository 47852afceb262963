"""The Python API: config, scan, prepare, Store, DataLoader."""

import gc
import os

import numpy as np
import pytest

import larder
from conftest import make_dataset


def test_load_config_reports_warnings_and_errors(tmp_path):
    make_dataset(str(tmp_path), n=3)
    path = tmp_path / "w.yaml"
    path.write_text("datasets:\n  - folder_path: imgs\n    augments: [ColorJitter]\n")
    config = larder.load_config(path)
    assert len(config) == 1 and config.divisibility == 16
    assert any("augments" in w for w in config.warnings)
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  - folder_path: imgs\n    resolution: huge\n")
    with pytest.raises(larder.ConfigError) as err:
        larder.load_config(bad)
    assert "bad.yaml:3" in str(err.value) and "datasets[0].resolution" in str(err.value)


def test_scan_reports_buckets_and_items(tmp_path):
    config = make_dataset(str(tmp_path), n=6)
    report = larder.scan(config)
    assert report.items_total == 6
    assert sum(b["count"] for b in report.buckets) == 6
    item = report.items[0]
    for key in ["path", "width", "height", "bucket_w", "bucket_h", "crop_x", "caption"]:
        assert key in item
    assert report.to_dict()["items_total"] == 6


def test_prepare_is_incremental_and_the_store_verifies(tmp_path):
    config = make_dataset(str(tmp_path), n=6)
    out = tmp_path / "store"
    first = larder.prepare(config, out)
    assert (first["items"], first["entries_computed"]) == (6, 6)
    again = larder.prepare(larder.load_config(config), out)
    assert (again["entries_computed"], again["entries_reused"]) == (0, 6)
    store = larder.Store.open(out)
    assert store.inspect()["items"] == 6
    assert store.verify()["problems"] == []


def test_batches_are_dicts_of_arrays_with_captions(store_path):
    loader = larder.DataLoader(store_path, batch_size=4, seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    b = batches[0]
    pixels = b["pixels"]
    assert pixels.dtype == np.uint8 and pixels.ndim == 4 and pixels.shape[:2] == (4, 3)
    assert pixels.shape[2:] == (b["bucket"][1], b["bucket"][0])
    assert len(b["captions"]) == len(b["keys"]) == len(b["items"]) == 4
    assert b["dtypes"]["pixels"] == "U8"
    assert b["loss_multiplier"].dtype == np.float32


def _epoch(loader):
    return [(b["items"].tolist(), b["captions"], b["pixels"].tobytes()) for b in loader]


def test_the_same_seed_gives_the_same_batches(store_path):
    a = _epoch(larder.DataLoader(store_path, batch_size=3, seed=7, num_threads=1))
    b = _epoch(larder.DataLoader(store_path, batch_size=3, seed=7, num_threads=4))
    c = _epoch(larder.DataLoader(store_path, batch_size=3, seed=8))
    assert a == b
    assert [x[0] for x in a] != [x[0] for x in c]


def test_state_dict_resumes_exactly(store_path):
    full = _epoch(larder.DataLoader(store_path, batch_size=2, seed=5))
    loader = larder.DataLoader(store_path, batch_size=2, seed=5)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    head = [(b["items"].tolist(), b["captions"], b["pixels"].tobytes()) for b in head]
    state = loader.state_dict()
    assert state["consumed"] == 3 and state["epoch"] == 0
    resumed = larder.DataLoader(store_path, batch_size=2, seed=5)
    resumed.load_state_dict(state)
    assert head + _epoch(resumed) == full


def test_a_failed_load_state_dict_raises_and_leaves_the_loader_usable(store_path, tmp_path):
    # Issue #17: a state that could not be loaded left the loader closed for good.
    full = _epoch(larder.DataLoader(store_path, batch_size=2, seed=5))
    loader = larder.DataLoader(store_path, batch_size=2, seed=5)
    it = iter(loader)
    head = [next(it) for _ in range(2)]
    head = [(b["items"].tolist(), b["captions"], b["pixels"].tobytes()) for b in head]
    saved = loader.state_dict()

    # A malformed dict, and states saved further into an epoch than this store's epoch goes.
    with pytest.raises(larder.ArgumentError, match="not a larder loader state"):
        loader.load_state_dict({"epoch": 0})
    small = larder.DataLoader(_small_store(tmp_path), batch_size=2, seed=5)
    with pytest.raises(larder.ArgumentError, match="another store"):
        small.load_state_dict(dict(saved, consumed=11))
    assert len(_epoch(small)) == 3, "the small store's loader serves its own epoch as before"
    with pytest.raises(larder.ArgumentError, match="another store"):
        loader.load_state_dict(dict(saved, consumed=99))
    # The loader goes on from where it was.
    assert loader.state_dict() == saved
    assert head + _epoch(loader) == full


def _small_store(tmp_path):
    out = tmp_path / "small"
    if not out.exists():
        larder.prepare(make_dataset(str(tmp_path / "data"), n=6), out)
    return out


def test_controls_at_their_own_size_arrive_as_one_array_per_item(tmp_path):
    from conftest import write_png

    config = make_dataset(str(tmp_path), n=3)
    os.makedirs(tmp_path / "ctl")
    sizes = {0: (40, 30), 1: (50, 70), 2: (33, 17)}
    for i, (w, h) in sizes.items():
        write_png(str(tmp_path / "ctl" / f"img{i:03d}.png"), w, h, 100 + i)
    text = open(config).read() + "    control_path: ctl\nlarder:\n  raw_control_images: true\n"
    open(config, "w").write(text)
    larder.prepare(config, tmp_path / "store")
    for fmt in ("numpy", "torch"):
        loader = larder.DataLoader(tmp_path / "store", batch_size=4, shuffle=False, format=fmt)
        shapes = {}
        for batch in loader:
            assert "control.0" not in batch
            own = batch["control_raw.0"]
            assert isinstance(own, list) and len(own) == len(batch["items"])
            assert batch["dtypes"]["control_raw.0"] == "U8"
            for item, array in zip(batch["items"].tolist(), own):
                shapes[item] = tuple(array.shape)
                assert type(array).__module__.split(".")[0] == fmt
        # Each item's control at its own size, whichever bucket the item is in.
        assert sorted(shapes.values()) == sorted((3, h, w) for w, h in sizes.values())


def test_set_batch_size_and_set_epoch(store_path):
    loader = larder.DataLoader(store_path, batch_size=1, seed=1, drop_last=False)
    it = iter(loader)
    assert len(next(it)["items"]) == 1
    loader.set_batch_size(4)
    assert len(next(it)["items"]) == 4
    assert loader.state_dict()["history"][0]["batch_size"] == 4
    loader.set_epoch(3)
    assert loader.epoch == 3
    assert next(iter(loader))["epoch"] == 3


def test_arrays_view_rust_memory_without_a_copy(store_path):
    b = next(iter(larder.DataLoader(store_path, batch_size=4)))
    pixels = b["pixels"]
    assert not pixels.flags.owndata
    assert type(pixels.base).__name__ == "Buffer"
    assert pixels.base.nbytes == pixels.nbytes


def test_a_batch_outlives_its_loader(store_path):
    loader = larder.DataLoader(store_path, batch_size=4, seed=2)
    batch = next(iter(loader))
    expected = batch["pixels"].copy()
    del loader
    gc.collect()
    # Allocate and fill other memory; a dangling view would now show it.
    junk = [np.full(expected.shape, 7, dtype=np.uint8) for _ in range(8)]
    assert np.array_equal(batch["pixels"], expected)
    assert len(junk) == 8


def test_errors_form_one_hierarchy(tmp_path):
    for cls in [larder.ConfigError, larder.StoreError, larder.DecodeError, larder.RemoteError, larder.ArgumentError]:
        assert issubclass(cls, larder.LarderError)
    with pytest.raises(larder.StoreError) as err:
        larder.Store.open(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    with pytest.raises(larder.ArgumentError):
        larder.DataLoader(tmp_path / "nowhere", format="jax")


def test_a_missing_shard_raises_at_its_batch_naming_it(tmp_path):
    config = make_dataset(str(tmp_path), n=9)
    out = tmp_path / "store"
    larder.prepare(config, out, shard_bytes=16 << 10)
    shard = sorted((out / "shards").iterdir())[0]
    shard.unlink()
    loader = larder.DataLoader(out, batch_size=1, seed=0, shuffle=False)
    raised, served = [], []
    # Each error ends that iteration; iterating again goes on with the next batch.
    while loader.epoch == 0:
        try:
            served.extend(i for b in loader for i in b["items"].tolist())
        except larder.StoreError as e:
            raised.append(str(e))
    assert raised and served
    assert all(shard.name in e and "item " in e for e in raised)
    assert len(raised) + len(served) == 9, (raised, served)


def test_pin_memory_pins_with_cuda_and_says_why_not_without(store_path, caplog):
    probe = larder.cuda_probe()
    with caplog.at_level("WARNING", logger="larder"):
        loader = larder.DataLoader(store_path, batch_size=2, pin_memory=True)
    assert loader.pinned == probe["pinned_usable"]
    if not loader.pinned:
        (record,) = [r for r in caplog.records if "pin_memory" in r.getMessage()]
        assert probe["driver_error"].removeprefix("CUDA: ") in record.getMessage()
    # Pinned or not, the batches are the same.
    plain = larder.DataLoader(store_path, batch_size=2)
    for a, b in zip(loader, plain):
        assert np.array_equal(a["pixels"], b["pixels"])
    assert not larder.DataLoader(store_path).pinned


def test_ranks_split_the_epoch(store_path):
    seen = []
    for rank in range(3):
        loader = larder.DataLoader(store_path, batch_size=2, seed=4, rank=rank, world_size=3)
        steps = list(loader)
        assert len(steps) == len(loader)
        seen.extend(i for b in steps for i in b["items"].tolist())
    assert set(seen) == set(range(24))


def test_stubs_match_the_module():
    import ast

    import larder._larder as native

    stub = os.path.join(os.path.dirname(larder.__file__), "_larder.pyi")
    tree = ast.parse(open(stub).read())
    declared = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            declared.add(node.target.id)
    public = {n for n in dir(native) if not n.startswith("_")} | {"__version__"}
    assert declared == public
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = {m.name for m in node.body if isinstance(m, ast.FunctionDef) and not m.name.startswith("__")}
            actual = {n for n in dir(getattr(native, node.name)) if not n.startswith("_")}
            assert methods <= actual, (node.name, methods - actual)
            # The exception classes' bases, in order, as the stubs declare them.
            bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
            if bases:
                assert [b.__name__ for b in getattr(native, node.name).__bases__] == bases, node.name


def test_engine_warnings_reach_python_logging(tmp_path, caplog):
    config = make_dataset(str(tmp_path), n=4)
    out = tmp_path / "store"
    larder.prepare(config, out, shard_bytes=8 << 10)
    next((out / "shards").iterdir()).unlink()
    with caplog.at_level("WARNING", logger="larder"):
        larder.prepare(config, out, shard_bytes=8 << 10)
    records = [r for r in caplog.records if r.name == "larder"]
    assert any(r.levelname == "WARNING" and "missing" in r.getMessage() for r in records), records
