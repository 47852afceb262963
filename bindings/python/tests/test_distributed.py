"""Distributed prepare from Python: parts prepared with ``shard=(i, n)``, merged with
``larder.merge`` into the store an unsharded prepare writes."""

import os

import numpy as np
import pytest

import larder
from conftest import make_dataset
from test_encoders import HashText, PatchVAE


def _encoders():
    return {
        "image_encoders": {"latent": larder.Encoder(PatchVAE(), "patch-vae seed0 f32", scaling_factor=0.5, shift_factor=0.1)},
        "text_encoders": {"text": larder.Encoder(HashText(), "hash-text-8")},
        "caption_variants": 3,
        "shard_bytes": 32 << 10,
    }


def _served(path):
    """Two epochs of batches: ids, item keys, captions and every array's bytes."""
    loader = larder.DataLoader(path, batch_size=3, seed=11)
    out = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for b in loader:
            arrays = {k: v.tobytes() for k, v in b.items() if isinstance(v, np.ndarray)}
            out.append((b["captions"], b["keys"], arrays))
    return out


def test_parts_merge_into_the_store_an_unsharded_prepare_writes(tmp_path):
    config = make_dataset(str(tmp_path), n=10)
    whole = os.path.join(tmp_path, "whole")
    reference = larder.prepare(config, whole, **_encoders())
    out = os.path.join(tmp_path, "store")
    items = 0
    for i in range(3):
        report = larder.prepare(config, out, shard=(i, 3), **_encoders())
        assert os.path.isfile(os.path.join(out, "parts", f"{i}-of-3", "catalog.sqlite"))
        items += report["items"]
    assert items == reference["items"]
    merged = larder.merge(out)
    assert merged["parts"] == 3 and merged["items"] == reference["items"]
    assert not os.path.exists(os.path.join(out, "parts"))
    assert larder.Store.open(out).verify()["problems"] == []
    assert larder.Store.open(out).inspect()["items"] == reference["items"]
    served = _served(out)
    assert any(k.startswith("text") for _, _, arrays in served for k in arrays)
    assert "latent" in served[0][2]
    assert served == _served(whole)


def test_bad_shards_and_missing_parts_raise(tmp_path):
    config = make_dataset(str(tmp_path), n=4)
    out = os.path.join(tmp_path, "store")
    with pytest.raises(larder.ArgumentError, match="below the count"):
        larder.prepare(config, out, shard=(2, 2))
    larder.prepare(config, out, shard=(1, 2))
    with pytest.raises(larder.StoreError, match="0/2 missing"):
        larder.merge(out)
    # Named explicitly, from elsewhere: merged into a new folder.
    larder.prepare(config, out, shard=(0, 2))
    parts = [os.path.join(out, "parts", f"{i}-of-2") for i in range(2)]
    merged = larder.merge(os.path.join(tmp_path, "merged"), parts)
    assert merged["items"] == 4
