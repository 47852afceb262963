"""larder.import_aitk: AI Toolkit's cache files, written here exactly as AI Toolkit names and
describes them (toolkit/dataloader_mixins.py, toolkit/metadata.py, PromptEmbeds.save), copied
into a store without re-encoding."""

import base64
import hashlib
import json
import os
from collections import OrderedDict

import numpy as np
from safetensors.numpy import save_file

import larder
from conftest import make_dataset


def aitk_hash(info):
    digest = hashlib.md5(json.dumps(info, sort_keys=True).encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").replace("=", "")


def aitk_meta(info):
    """toolkit.metadata.get_meta_for_safetensors."""
    meta = OrderedDict(info)
    meta["software"] = {"name": "ai-toolkit", "version": "0.1.0"}
    for key, value in meta.items():
        if not isinstance(value, str):
            meta[key] = json.dumps(value)
    meta["format"] = "pt"
    return meta


def latent_info(item, arch, crop_x=None):
    info = OrderedDict([
        ("filename", os.path.basename(item["path"])),
        ("scale_to_width", item["scale_to_w"]),
        ("scale_to_height", item["scale_to_h"]),
        ("crop_x", item["crop_x"] if crop_x is None else crop_x),
        ("crop_y", item["crop_y"]),
        ("crop_width", item["bucket_w"]),
        ("crop_height", item["bucket_h"]),
        ("latent_space_version", arch),
        ("latent_version", 1),
    ])
    if item["flip"] in ("x", "xy"):
        info["flip_x"] = True
    return info


def write_latent(item, arch, seed, crop_x=None):
    info = latent_info(item, arch, crop_x)
    folder = os.path.join(os.path.dirname(item["path"]), "_latent_cache")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(item["path"]))[0]
    path = os.path.join(folder, f"{stem}_{aitk_hash(info)}.safetensors")
    latent = np.random.default_rng(seed).standard_normal((16, item["bucket_h"] // 8, item["bucket_w"] // 8)).astype(np.float16)
    save_file({"latent": latent}, path, metadata=aitk_meta(info))
    return latent


def write_text(item, arch, seed, tokens):
    info = OrderedDict([("caption", item["caption"]), ("text_embedding_space_version", arch), ("text_embedding_version", 1)])
    folder = os.path.join(os.path.dirname(item["path"]), "_t_e_cache")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(item["path"]))[0]
    rng = np.random.default_rng(seed)
    embeds = rng.standard_normal((1, 12, 8)).astype(np.float32)
    mask = np.zeros((1, 12), np.int64)
    mask[0, :tokens] = 1
    pooled = rng.standard_normal((1, 8)).astype(np.float32)
    # PromptEmbeds.save writes no metadata.
    save_file({"text_embed": embeds, "pooled_embed": pooled, "attention_mask": mask}, os.path.join(folder, f"{stem}_{aitk_hash(info)}.safetensors"))
    return embeds[0, :tokens]


def write_clip(item, seed):
    info = OrderedDict([("image_encoder_path", "openai/clip-vit-large-patch14"), ("filename", os.path.basename(item["path"])), ("is_quad", False)])
    folder = os.path.join(os.path.dirname(item["path"]), "_clip_vision_cache")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(item["path"]))[0]
    rng = np.random.default_rng(seed)
    tensors = {
        "image_embeds": rng.standard_normal((1, 16)).astype(np.float32),
        "last_hidden_state": rng.standard_normal((1, 5, 16)).astype(np.float32),
        "penultimate_hidden_states": rng.standard_normal((1, 5, 16)).astype(np.float32),
    }
    save_file(tensors, os.path.join(folder, f"{stem}_{aitk_hash(info)}.safetensors"), metadata=aitk_meta(info))
    return tensors["image_embeds"][0]


def bf16(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_matching_caches_are_imported_and_the_rest_reported_then_encoded(tmp_path):
    config = make_dataset(str(tmp_path), n=6)
    plain = tmp_path / "plain.yaml"
    plain.write_text("datasets:\n  - folder_path: imgs\n    resolution: 64\n")
    items = larder.scan(plain).items
    by_path = {}
    for i, item in enumerate(items):
        if i == 4:
            write_latent(item, "flux", i, crop_x=item["crop_x"] + 8)  # another crop: a mismatch
        elif i < 4:
            by_path[item["path"]] = write_latent(item, "flux", i)
        # item 5 has no latent cache at all
    texts = {item["caption"]: write_text(item, "flux", 100 + i, tokens=3 + i % 4) for i, item in enumerate(items[:5])}
    clip = {items[0]["path"]: write_clip(items[0], 7)}

    out = tmp_path / "store"
    report = larder.import_aitk(plain, out)
    assert report["arch"] == "flux"
    assert report["latents"] == {"imported": 4, "stored": 0, "missing": 1, "mismatched": 1}
    assert report["texts"]["imported"] == 5 and report["texts"]["missing"] == 1
    assert report["clip"]["imported"] == 1
    [m] = [m for m in report["mismatches"] if m["kind"] == "latent"]
    assert "crop_x" in m["reason"] and m["item"].endswith(os.path.basename(items[4]["path"]))

    store = larder.Store.open(out)
    assert store.verify()["problems"] == []
    seen = 0
    for batch in larder.DataLoader(out, batch_size=1, shuffle=False):
        path = None
        for item in items:
            if item["caption"] == batch["captions"][0]:
                path = item["path"]
        if path in by_path:
            np.testing.assert_allclose(bf16(batch["latent"][0]), by_path[path].astype(np.float32), rtol=1 / 128, atol=1e-3)
            seen += 1
        if "text.embeds" in batch:
            expected = texts[batch["captions"][0]]
            assert batch["text.mask"][0].sum() == len(expected)
            np.testing.assert_allclose(bf16(batch["text.embeds"][0][: len(expected)]), expected, rtol=1 / 128, atol=1e-6)
        if path in clip:
            np.testing.assert_allclose(bf16(batch["clip"][0]), clip[path], rtol=1 / 128)
            assert batch["clip.last_hidden_state"].shape == (1, 5, 16)
    assert seen == 4

    again = larder.import_aitk(plain, out)
    assert again["latents"]["imported"] == 0 and again["latents"]["stored"] == 4

    # The encoder with the identity the import used computes only what the import lacked.
    calls = []

    def vae(pixels):
        calls.append(len(pixels))
        n, _, h, w = pixels.shape
        return np.ones((n, 16, h // 8, w // 8), np.float32)

    larder.prepare(plain, out, image_encoders={"latent": larder.Encoder(vae, "ai-toolkit/flux")}, encode_batch_size=1)
    assert sum(calls) == 2


def test_a_wrong_architecture_imports_nothing_and_says_why(tmp_path):
    make_dataset(str(tmp_path), n=2)
    plain = tmp_path / "plain.yaml"
    plain.write_text("datasets:\n  - folder_path: imgs\n    resolution: 64\n")
    for i, item in enumerate(larder.scan(plain).items):
        write_latent(item, "sdxl", i)
    report = larder.import_aitk(plain, tmp_path / "store", arch="flux")
    assert report["latents"]["imported"] == 0 and report["latents"]["mismatched"] == 2
    assert all("latent_space_version" in m["reason"] for m in report["mismatches"])


def test_a_renamed_cache_file_is_not_trusted(tmp_path):
    make_dataset(str(tmp_path), n=1)
    plain = tmp_path / "plain.yaml"
    plain.write_text("datasets:\n  - folder_path: imgs\n    resolution: 64\n")
    [item] = larder.scan(plain).items
    write_latent(item, "flux", 0)
    folder = os.path.join(os.path.dirname(item["path"]), "_latent_cache")
    [name] = os.listdir(folder)
    stem = os.path.splitext(os.path.basename(item["path"]))[0]
    os.rename(os.path.join(folder, name), os.path.join(folder, f"{stem}_{'A' * 22}.safetensors"))
    report = larder.import_aitk(plain, tmp_path / "store")
    assert report["latents"]["mismatched"] == 1
    assert "does not match its recorded parameters" in report["mismatches"][0]["reason"]


def test_a_cache_file_whose_tensor_cannot_be_read_is_a_mismatch_not_an_abort(tmp_path):
    make_dataset(str(tmp_path), n=2)
    plain = tmp_path / "plain.yaml"
    plain.write_text("datasets:\n  - folder_path: imgs\n    resolution: 64\n")
    good, bad = larder.scan(plain).items
    write_latent(good, "flux", 0)
    # The right name and metadata, but no `latent` tensor inside (another tool's file, say).
    info = latent_info(bad, "flux")
    folder = os.path.join(os.path.dirname(bad["path"]), "_latent_cache")
    stem = os.path.splitext(os.path.basename(bad["path"]))[0]
    save_file({"other": np.zeros((2, 2), np.float16)}, os.path.join(folder, f"{stem}_{aitk_hash(info)}.safetensors"), metadata=aitk_meta(info))

    report = larder.import_aitk(plain, tmp_path / "store")
    assert report["latents"]["imported"] == 1 and report["latents"]["mismatched"] == 1
    [m] = [m for m in report["mismatches"] if m["kind"] == "latent"]
    assert "latent" in m["reason"] and m["item"].endswith(os.path.basename(bad["path"]))
    assert larder.Store.open(tmp_path / "store").verify()["problems"] == []
