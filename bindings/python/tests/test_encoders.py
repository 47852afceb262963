"""Encoders from Python: latents, text embeddings with variants, CLIP embeddings, errors."""

import os
import threading

import numpy as np
import pytest
import torch

import larder
from conftest import make_dataset


class PatchVAE:
    """A VAE stand-in: each 8x8 patch of the 3 channels projected to 4 values by seeded
    weights. Counts the images it sees."""

    def __init__(self, seed=0, fail_after=None):
        rng = np.random.default_rng(seed)
        self.weights = rng.standard_normal((4, 3 * 8 * 8)).astype(np.float32) / 24.0
        self.images = 0
        self.fail_after = fail_after
        self.inputs = []

    def __call__(self, pixels):
        assert pixels.dtype == np.float32 and pixels.ndim == 4 and pixels.shape[1] == 3
        if self.fail_after is not None and self.images >= self.fail_after:
            raise RuntimeError("CUDA out of memory (simulated)")
        self.images += len(pixels)
        self.inputs.append((pixels.min(), pixels.max()))
        return project(pixels, self.weights)


def project(pixels, weights):
    n, c, h, w = pixels.shape
    patches = pixels.reshape(n, c, h // 8, 8, w // 8, 8).transpose(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(n, h // 8, w // 8, c * 64)
    return np.einsum("nyxk,ok->noyx", patches, weights).astype(np.float32)


class HashText:
    """A text encoder stand-in: comma-separated tokens hashed into seeded 8-dim embeddings,
    right-padded to the batch's longest caption, with a mask and a pooled mean."""

    def __init__(self):
        self.captions = []

    @staticmethod
    def tokens(caption):
        return ["<s>"] + [t.strip() for t in caption.split(",") if t.strip()]

    @staticmethod
    def embed(token):
        seed = int.from_bytes(token.encode(), "little") % (2**32)
        return np.random.default_rng(seed).standard_normal(8).astype(np.float32)

    def __call__(self, captions):
        self.captions.extend(captions)
        toks = [self.tokens(c) for c in captions]
        length = max(len(t) for t in toks)
        embeds = np.zeros((len(captions), length, 8), np.float32)
        mask = np.zeros((len(captions), length), np.int64)
        for i, t in enumerate(toks):
            for j, token in enumerate(t):
                embeds[i, j] = self.embed(token)
                mask[i, j] = 1
        pooled = embeds.sum(1) / mask.sum(1, keepdims=True)
        return {"embeds": embeds, "pooled": pooled, "attention_mask": mask}


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_latents_are_the_callables_output_and_reruns_call_it_only_for_changes(tmp_path):
    config = make_dataset(str(tmp_path), n=6)
    out = tmp_path / "store"
    vae = PatchVAE()
    encoder = larder.Encoder(vae, "patch-vae seed0 f32", scaling_factor=0.5, shift_factor=0.1)
    report = larder.prepare(config, out, image_encoders={"latent": encoder}, encode_batch_size=4)
    assert report["items"] == 6 and vae.images == 6
    # Pixels arrive as AI Toolkit's VAE gets them: float32 in [-1, 1].
    assert min(lo for lo, _ in vae.inputs) >= -1.0 and max(hi for _, hi in vae.inputs) <= 1.0

    loader = larder.DataLoader(out, batch_size=2, shuffle=False)
    for batch in loader:
        assert batch["dtypes"]["latent"] == "BF16"
        # NumPy has no bfloat16: the bits arrive as uint16 (docs/python.md).
        assert batch["latent"].dtype == np.uint16
        pixels = batch["pixels"].astype(np.float32) / 127.5 - 1.0
        expected = project(pixels, vae.weights)
        got = bf16_to_f32(batch["latent"])
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1 / 128, atol=1e-6)
        assert np.abs(expected).max() > 1e-3

    again = PatchVAE()
    larder.prepare(config, out, image_encoders={"latent": larder.Encoder(again, "patch-vae seed0 f32", scaling_factor=0.5, shift_factor=0.1)})
    assert again.images == 0
    from conftest import write_png

    write_png(os.path.join(tmp_path, "imgs", "img001.png"), 96, 64, 1234)
    edited = PatchVAE()
    larder.prepare(config, out, image_encoders={"latent": larder.Encoder(edited, "patch-vae seed0 f32", scaling_factor=0.5, shift_factor=0.1)})
    assert edited.images == 1
    # A new scaling factor is a new identity: everything is encoded again.
    rescaled = PatchVAE()
    larder.prepare(config, out, image_encoders={"latent": larder.Encoder(rescaled, "patch-vae seed0 f32", scaling_factor=0.25, shift_factor=0.1)})
    assert rescaled.images == 6


def test_an_exception_names_the_item_keeps_the_work_done_and_a_rerun_finishes(tmp_path):
    config = make_dataset(str(tmp_path), n=6)
    out = tmp_path / "store"
    failing = PatchVAE(fail_after=4)
    with pytest.raises(larder.EncoderError) as err:
        larder.prepare(config, out, image_encoders={"latent": larder.Encoder(failing, "patch")}, encode_batch_size=1)
    message = str(err.value)
    assert "latent" in message and "img0" in message and "out of memory" in message
    assert isinstance(err.value.__cause__, RuntimeError)
    assert failing.images == 4
    fixed = PatchVAE()
    report = larder.prepare(config, out, image_encoders={"latent": larder.Encoder(fixed, "patch")}, encode_batch_size=1)
    assert fixed.images == 2
    assert report["items"] == 6
    assert larder.Store.open(out).verify()["problems"] == []


def test_uint8_pixels_and_bfloat16_torch_tensor_results(tmp_path):
    config = make_dataset(str(tmp_path), n=3)
    seen = []

    def encode(pixels):
        seen.append(pixels.dtype)
        # A VAE returns a torch tensor, in bfloat16 often (larder reads it through
        # detach().float().cpu().numpy()).
        return torch.from_numpy(pixels[:, :, ::8, ::8].astype(np.float32)).to(torch.bfloat16)

    report = larder.prepare(config, tmp_path / "s", image_encoders={"latent": larder.Encoder(encode, "subsample", pixels="uint8")}, latent_codec="f32", store_pixels=False)
    assert report["items"] == 3 and seen == [np.uint8]  # one bucket (64x64), one call
    batch = next(iter(larder.DataLoader(tmp_path / "s", batch_size=1)))
    assert "pixels" not in batch and batch["latent"].dtype == np.float32
    assert batch["latent"].max() > 1


def test_text_embeddings_are_deduplicated_with_variants_and_padded_with_masks(tmp_path):
    config = make_dataset(str(tmp_path), n=6)  # shuffle_tokens: true
    out = tmp_path / "store"
    text = HashText()
    report = larder.prepare(config, out, text_encoders={"text": larder.Encoder(text, "hash-text-8")}, caption_variants=3)
    # Each distinct string once: the empty caption plus up to 3 shuffles of each caption.
    assert len(text.captions) == len(set(text.captions)) == report["captions"]
    assert "" in text.captions and 6 < report["captions"] <= 1 + 6 * 3
    again = HashText()
    assert larder.prepare(config, out, text_encoders={"text": larder.Encoder(again, "hash-text-8")}, caption_variants=3)["captions_encoded"] == 0
    assert again.captions == []

    only_text = next(iter(larder.DataLoader(out, batch_size=2, fields=["text"])))
    assert {"text.embeds", "text.pooled", "text.mask"} <= set(only_text) and "pixels" not in only_text

    for side in ["right", "left"]:
        for batch in larder.DataLoader(out, batch_size=3, text_padding=side, seed=1):
            embeds, mask, pooled = batch["text.embeds"], batch["text.mask"], batch["text.pooled"]
            assert embeds.shape[:2] == mask.shape and embeds.shape[2] == 8 and pooled.shape == (3, 8)
            for k, caption in enumerate(batch["captions"]):
                assert caption in text.captions
                n = len(HashText.tokens(caption))
                row = mask[k].astype(bool)
                assert row.sum() == n
                real = bf16_to_f32(embeds[k][row])
                expected = np.stack([HashText.embed(t) for t in HashText.tokens(caption)])
                np.testing.assert_allclose(real, expected, rtol=1 / 128, atol=1e-6)
                first = np.argmax(row)
                assert first == (0 if side == "right" else mask.shape[1] - n)


def test_a_text_encoder_with_controls_gets_each_captions_control_files(tmp_path):
    from conftest import write_png

    make_dataset(str(tmp_path), n=3)
    os.makedirs(tmp_path / "ctl")
    for i in range(3):
        write_png(str(tmp_path / "ctl" / f"img{i:03d}.png"), 48, 40, 200 + i)
    config = tmp_path / "edit.yaml"
    config.write_text("datasets:\n  - folder_path: imgs\n    resolution: 64\n    control_path: ctl\n    caption_dropout_rate: 0.3\n")
    calls = []

    def encode(captions, controls):
        calls.extend(zip(captions, controls))
        # The control's file name joins the caption's tokens, so embeddings differ by control.
        return HashText()([c + "".join(f", {os.path.basename(f)}" for f in files) for c, files in zip(captions, controls)])

    out = tmp_path / "store"
    larder.prepare(config, out, text_encoders={"text": larder.Encoder(encode, "hash-text-8+controls", controls=True)})
    # Each item's caption with its control; the empty caption (unconditional and dropout)
    # alone.
    with_files = {c: f for c, f in calls if f}
    assert len(with_files) == 3
    for caption, files in with_files.items():
        # "tag1, red, blue" is img001's caption.
        index = int(caption.split(",")[0][len("tag"):])
        assert [os.path.relpath(f, tmp_path) for f in files] == [f"ctl/img{index:03d}.png"], caption
    assert ("", []) in calls
    served = 0
    for batch in larder.DataLoader(out, batch_size=3, seed=2):
        for k, caption in enumerate(batch["captions"]):
            n = int(batch["text.mask"][k].sum())
            # A kept caption has its control's token; a dropped one is the empty caption alone.
            assert n == (1 if caption == "" else len(HashText.tokens(caption)) + 1)
            served += 1
    assert served == 3


def test_caption_dropout_serves_the_empty_caption_embedding(tmp_path):
    make_dataset(str(tmp_path), n=4)
    config = tmp_path / "drop.yaml"
    config.write_text("datasets:\n  - folder_path: imgs\n    resolution: 64\n    caption_dropout_rate: 1.0\n")
    out = tmp_path / "store"
    larder.prepare(config, out, text_encoders={"text": larder.Encoder(HashText(), "hash-text-8")})
    for batch in larder.DataLoader(out, batch_size=2):
        assert batch["captions"] == ["", ""]
        assert batch["text.mask"].sum(1).tolist() == [1, 1]


def test_clip_encoders_get_clip_normalized_squares(tmp_path):
    config = make_dataset(str(tmp_path), n=3)
    shapes = []

    def clip(pixels):
        shapes.append(pixels.shape)
        return pixels.mean(axis=(2, 3))

    larder.prepare(config, tmp_path / "s", clip_encoders={"clip": larder.Encoder(clip, "mean-clip")}, clip_size=32)
    assert sum(s[0] for s in shapes) == 3 and all(s[1:] == (3, 32, 32) for s in shapes)
    batch = next(iter(larder.DataLoader(tmp_path / "s", batch_size=1)))
    assert batch["clip"].shape == (1, 3)


def test_clip_image_path_images_reach_a_uint8_clip_encoder_and_the_batches_squared(tmp_path):
    """Each item's image of the same stem in ``clip_image_path``, squared (here 48x32 -> 32x32)
    for a CLIP encoder that runs its own processor, and served per item where CLIP embeddings
    are not cached."""
    from PIL import Image

    config = make_dataset(str(tmp_path), n=3)
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        Image.new("RGB", (48, 32), (40 * i, 100, 200)).save(refs / f"img{i:03d}.png")
    with open(config, "a") as f:
        f.write("    clip_image_path: refs\n")
    seen = []

    def clip(pixels):
        seen.append((pixels.shape, pixels.dtype, int(pixels[0, 0, 0, 0])))
        return pixels.reshape(1, -1)[:, :3].astype(np.float32)

    larder.prepare(config, tmp_path / "s", clip_encoders={"clip": larder.Encoder(clip, "own-processor", pixels="uint8")})
    assert sorted(seen) == [((1, 3, 32, 32), np.uint8, 40 * i) for i in range(3)]
    larder.prepare(config, tmp_path / "images")
    for batch in larder.DataLoader(tmp_path / "images", batch_size=1):
        (own,) = batch["clip_image"]
        assert own.shape == (3, 32, 32) and own.dtype == np.uint8
        assert own[:, 16, 16].tolist() == [40 * int(batch["items"][0]), 100, 200]


def test_a_callable_without_identity_is_refused(tmp_path):
    config = make_dataset(str(tmp_path), n=1)
    with pytest.raises(larder.ArgumentError, match="identity"):
        larder.prepare(config, tmp_path / "s", image_encoders={"latent": lambda x: x})

    def fn(x):
        return x[:, :, ::8, ::8]

    fn.larder_identity = "subsample"
    assert larder.prepare(config, tmp_path / "s", image_encoders={"latent": fn})["items"] == 1


def test_the_gil_is_free_between_encoder_calls(tmp_path):
    config = make_dataset(str(tmp_path), n=12)
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        larder.prepare(config, tmp_path / "s", image_encoders={"latent": larder.Encoder(PatchVAE(), "patch")}, encode_batch_size=1)
    finally:
        stop.set()
        t.join()
    assert len(ticks) > 3


def test_f16_fields_reach_numpy_as_float16_not_uint16(tmp_path):
    # Issue #17: float16 latents came out as their uint16 bits.
    config = make_dataset(str(tmp_path), n=3)
    out = tmp_path / "store"
    vae = PatchVAE()
    encoder = larder.Encoder(vae, "patch-vae seed0 f32", scaling_factor=0.5, shift_factor=0.1)
    larder.prepare(config, out, image_encoders={"latent": encoder}, latent_codec="f16")
    batches = list(larder.DataLoader(out, batch_size=1, shuffle=False))
    assert len(batches) == 3
    for batch in batches:
        latent = batch["latent"]
        assert batch["dtypes"]["latent"] == "F16"
        assert latent.dtype == np.float16
        assert not latent.flags.owndata, "a view of larder's buffer, not a copy"
        pixels = batch["pixels"].astype(np.float32) / 127.5 - 1.0
        np.testing.assert_allclose(latent.astype(np.float32), project(pixels, vae.weights), rtol=1 / 1024, atol=1e-3)
