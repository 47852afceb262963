"""The AI Toolkit drop-in, with AI Toolkit's real trainer (``$AITK_PATH``, set by scripts/test to
../shared/peers/ai-toolkit) training tiny random models on the CPU.

Each run is a subprocess (``python -m larder.aitk run``), as a user runs it. Where AI Toolkit
or its packages (scripts/requirements-aitk.txt) are missing, these tests do not run, and
pytest's summary (``-rs`` in scripts/test) says so in one line with the reason.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import aitk_fixtures as fx

import larder

AITK = fx.aitk_path()


def _missing() -> str:
    if AITK is None:
        return "AITK_PATH does not name an AI Toolkit checkout (scripts/test sets it to ../shared/peers/ai-toolkit)"
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"AI Toolkit's packages are not installed (pip install -r scripts/requirements-aitk.txt): {e}"
    return ""


MISSING = _missing()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"did not run: {MISSING}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny models by family, built on first use."""
    built = {}
    builders = {"sd15": fx.build_tiny_sd15, "flux": fx.build_tiny_flux, "wan21": fx.build_tiny_wan21}

    def model(kind):
        if kind not in built:
            built[kind] = builders[kind](str(tmp_path_factory.mktemp("models") / f"tiny-{kind}"))
        return built[kind]

    return model


@pytest.fixture(scope="module")
def sd15(models):
    return models("sd15")


def _run(args, tmp, env_extra=None, expect=0):
    env = fx.aitk_env(AITK, str(tmp))
    env.update(env_extra or {})
    done = subprocess.run(
        [sys.executable, "-m", "larder.aitk", *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == expect, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def _job(tmp, model, name, data, steps=2, process_type="sd_trainer", kind="sd15", **dataset):
    job = fx.aitk_job(kind, name, tmp / "output", data, model, steps=steps, process_type=process_type, **dataset)
    return fx.write_job(job, str(tmp / f"{name}-{steps}.yaml"))


# AI Toolkit's trainer with its own data path (argv: the checkout, the job): what larder's
# stored tensors are compared with.
OWN_DATA_PATH = (
    "import sys; from pathlib import Path\n"
    "from larder.aitk.toolkit import enter, make_job, read_job, tolerate_broken_model_packages\n"
    "enter(Path(sys.argv[1])); tolerate_broken_model_packages()\n"
    "from extensions_built_in.sd_trainer.SDTrainer import SDTrainer\n"
    "job = make_job(read_job(sys.argv[2]), {'sd_trainer': SDTrainer}); job.run(); job.cleanup()\n"
)


def _log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _store_latents(store_dir, field="latent"):
    """Each stored item's latent (``field``), by source path (flip-free items only)."""
    store = larder.Store.open(store_dir)
    paths = {item["id"]: item["path"] for item in store.items()}
    latents = {}
    loader = larder.DataLoader(store, batch_size=1, shuffle=False, format="torch")
    for batch in loader:
        latents[paths[int(batch["items"][0])]] = batch[field][0].float().numpy()
    return latents


# The SD1.5 family (4-channel latents, scale only) and the Flux family (16 channels, scale and
# shift, a flow-matching trainer).
@pytest.mark.parametrize("kind, channels", [("sd15", 4), ("flux", 16)])
def test_a_job_trains_on_larder_with_the_latents_ai_toolkit_computes(tmp_path, models, kind, channels):
    model = models(kind)
    data = tmp_path / "data"
    fx.make_images(str(data))
    log = tmp_path / "batches.jsonl"
    done = _run(["run", _job(tmp_path, model, "tiny", data, kind=kind), "--aitk", AITK], tmp_path, {"LARDER_AITK_BATCH_LOG": str(log)})

    save_root = tmp_path / "output" / "tiny"
    lora = save_root / "tiny.safetensors"
    assert lora.is_file(), done.stdout[-2000:]
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as f:
        assert any("lora" in k for k in f.keys())
    # Two steps, one batch each, every item one of the dataset's images.
    served = _log(log)
    assert len(served) == 2
    images = {str(p) for p in data.glob("*.png")}
    assert all(set(b["items"]) <= images for b in served)
    assert all(b["captions"][0].startswith("a photo of thing") for b in served)
    # The position at the final checkpoint is saved for a resume.
    assert (save_root / ".larder" / "positions" / "step-000000002.json").is_file()

    # AI Toolkit's own data path on a copy of the images caches its latents beside them; the
    # latents larder stored for the trainer are those.
    own = tmp_path / "own"
    shutil.copytree(data, own)
    own_job = _job(tmp_path, model, "own", own, kind=kind)
    subprocess.run(
        [sys.executable, "-c", OWN_DATA_PATH, AITK, own_job],
        cwd=tmp_path, env=fx.aitk_env(AITK, str(tmp_path)), check=True, capture_output=True, timeout=900,
    )
    from safetensors.numpy import load_file

    stored = _store_latents(save_root / ".larder" / "store" / "train")
    assert len(stored) == 4
    for path, latent in stored.items():
        stem = Path(path).stem
        (cache,) = (own / "_latent_cache").glob(f"{stem}_*.safetensors")
        theirs = load_file(str(cache))["latent"]
        assert latent.shape == theirs.shape == (channels, 8, 8)
        np.testing.assert_allclose(latent, theirs, atol=1e-5)

    # Run again (resuming to a third step), the job reuses every entry: nothing is encoded.
    again = _run(["run", _job(tmp_path, model, "tiny", data, steps=3, kind=kind), "--aitk", AITK], tmp_path)
    computed = re.findall(r"(\d+) entries computed, (\d+) reused", again.stderr + again.stdout)
    assert computed and computed[0][0] == "0" and int(computed[0][1]) > 0, again.stderr[-2000:]


def test_a_video_job_trains_on_larder_with_the_clip_latents_ai_toolkit_computes(tmp_path, models):
    """Wan 2.1 on clips of 5 frames with first-frame latents (``do_i2v``) and audio
    (``do_audio``): the trainer gets [B, C, f, h, w] latents and [B, C, 1, h, w] first-frame
    latents, those AI Toolkit's own caching computes from the same clips, and each clip's
    stereo waveform."""
    model = models("wan21")
    data = tmp_path / "clips"
    # Three clips; the last has a 16 kHz mono track (served as stereo).
    fx.make_clips(str(data), lengths=((30, 30), (24, 24)))
    fx.make_talking_clips(str(data), {"clip2.mp4": (40, 20, 16_000, 1)})
    video = {"num_frames": 5, "do_i2v": True, "do_audio": True}
    log = tmp_path / "batches.jsonl"
    done = _run(["run", _job(tmp_path, model, "video", data, steps=3, kind="wan21", **video), "--aitk", AITK], tmp_path,
                {"LARDER_AITK_BATCH_LOG": str(log)})
    save_root = tmp_path / "output" / "video"
    assert (save_root / "video.safetensors").is_file(), done.stdout[-2000:]
    # One epoch: each clip once.
    served = _log(log)
    assert sorted(p for b in served for p in b["items"]) == sorted(str(p) for p in data.glob("*.mp4"))
    # 5 frames → 1 + 4/4 = 2 latent frames of 64/8 = 8; the first frame alone → 1. The clip
    # with sound also has its audio: 5 frames at the default 24 fps, 5 / 24 s of 16 kHz.
    latents = {"latents": [1, 16, 2, 8, 8], "first_frame_latents": [1, 16, 1, 8, 8]}
    for b in served:
        sound = {"audio_tensor": [1, 2, round(5 / 24 * 16_000)]} if b["items"] == [str(data / "clip2.mp4")] else {}
        assert b["shapes"] == {**latents, **sound}, b

    # AI Toolkit's own caching of the same clips (without the audio, which it would encode
    # with the model's encode_audio, which Wan does not have).
    own = tmp_path / "own"
    shutil.copytree(data, own)
    own_settings = {**video, "do_audio": False}
    subprocess.run(
        [sys.executable, "-c", OWN_DATA_PATH, AITK, _job(tmp_path, model, "own", own, kind="wan21", **own_settings)],
        cwd=tmp_path, env=fx.aitk_env(AITK, str(tmp_path)), check=True, capture_output=True, timeout=900,
    )
    from safetensors.numpy import load_file

    store = save_root / ".larder" / "store" / "train"
    ours = {"latent": _store_latents(store), "first_frame_latent": _store_latents(store, "latent.first_frame")}
    assert len(ours["latent"]) == 3
    for name, latents in ours.items():
        for path, latent in latents.items():
            (cache,) = (own / "_latent_cache").glob(f"{Path(path).stem}_*.safetensors")
            theirs = load_file(str(cache))[name]
            assert latent.shape == theirs.shape
            np.testing.assert_allclose(latent, theirs, atol=1e-5, err_msg=f"{name} of {path}")


# SD1.5: CLIP's embeddings alone; Flux: T5's with an attention mask, and CLIP's pooled.
@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_cached_text_embeddings_are_the_ones_ai_toolkit_computes_and_the_text_encoder_is_unloaded(tmp_path, models, kind):
    def job(name, data):
        job = fx.aitk_job(kind, name, tmp_path / "output", data, models(kind), steps=2, process_type="sd_trainer")
        job["config"]["process"][0]["train"]["cache_text_embeddings"] = True
        return fx.write_job(job, str(tmp_path / f"{name}.yaml"))

    data, own = tmp_path / "data", tmp_path / "own"
    fx.make_images(str(data))
    shutil.copytree(data, own)
    log = tmp_path / "batches.jsonl"
    done = _run(["run", job("te", data), "--aitk", AITK], tmp_path, {"LARDER_AITK_BATCH_LOG": str(log)})
    assert (tmp_path / "output" / "te" / "te.safetensors").is_file()
    assert len(_log(log)) == 2
    # AI Toolkit unloads its text encoder once the embeddings are cached, and trains on them.
    assert "UNLOADING TEXT ENCODER" in done.stdout + done.stderr

    # AI Toolkit's own data path caches one file per caption; larder's store holds the same.
    subprocess.run(
        [sys.executable, "-c", OWN_DATA_PATH, AITK, job("own", own)],
        cwd=tmp_path, env=fx.aitk_env(AITK, str(tmp_path)), check=True, capture_output=True, timeout=900,
    )
    from safetensors.numpy import load_file

    theirs = [load_file(str(f)) for f in sorted((own / "_t_e_cache").glob("*.safetensors"))]
    assert len(theirs) == 4
    ours = _stored_embeddings(tmp_path / "output" / "te" / ".larder" / "store" / "train")
    assert len(ours) == 4
    for cached in theirs:
        assert len(_matches(cached, ours.values())) == 1, sorted(cached)


def _stored_embeddings(store_dir, field="text", epochs=1):
    """The text embeddings of ``field`` served over ``epochs`` epochs, by the caption behind
    them (with caption dropout, the dropout caption too once an item drops it)."""
    loader = larder.DataLoader(larder.Store.open(store_dir), batch_size=1, shuffle=False, format="torch")
    ours = {}
    for _ in range(epochs):
        for batch in loader:
            ours[batch["captions"][0]] = {
                name: batch[f"{field}.{name}"][0].float().numpy()
                for name in ("embeds", "pooled", "attention_mask") if f"{field}.{name}" in batch
            }
    return ours


def _matches(cached, candidates):
    """The candidates equal to one of AI Toolkit's cached PromptEmbeds files."""
    names = {"text_embed": "embeds", "pooled_embed": "pooled", "attention_mask": "attention_mask"}
    assert set(cached) <= set(names)
    return [
        mine for mine in candidates
        if all(
            mine[names[key]].shape == value[0].shape and np.allclose(value[0].astype(np.float32), mine[names[key]], atol=1e-5)
            for key, value in cached.items()
        )
    ]


def test_preservation_and_dropout_embeddings_are_the_ones_ai_toolkit_caches(tmp_path, sd15):
    # Differential output preservation with cached text embeddings: AI Toolkit caches each
    # caption, its DOP version (trigger word -> class), and for caption dropout the trigger word
    # alone and its DOP version; larder's store holds each of them.
    def job(name, data):
        job = fx.aitk_job("sd15", name, tmp_path / "output", data, sd15, steps=2, process_type="sd_trainer",
                          caption_dropout_rate=0.5)
        train = job["config"]["process"][0]["train"]
        train.update(cache_text_embeddings=True, diff_output_preservation=True, diff_output_preservation_class="person")
        job["config"]["process"][0]["trigger_word"] = "sks"
        return fx.write_job(job, str(tmp_path / f"{name}.yaml"))

    data, own = tmp_path / "data", tmp_path / "own"
    fx.make_images(str(data))
    shutil.copytree(data, own)
    trained = _record(tmp_path, job("dop", data), "larder", "prompts")
    assert (tmp_path / "output" / "dop" / "dop.safetensors").is_file()
    subprocess.run(
        [sys.executable, "-c", OWN_DATA_PATH, AITK, job("own", own)],
        cwd=tmp_path, env=fx.aitk_env(AITK, str(tmp_path)), check=True, capture_output=True, timeout=900,
    )
    from safetensors.numpy import load_file

    theirs = [load_file(str(f)) for f in sorted((own / "_t_e_cache").glob("*.safetensors"))]
    store = tmp_path / "output" / "dop" / ".larder" / "store" / "train"
    # Over enough epochs every item is served both its caption and its dropout caption.
    texts, dops = _stored_embeddings(store, "text", epochs=12), _stored_embeddings(store, "dop", epochs=12)
    assert sorted(texts) == ["sks "] + [f"sks a photo of thing {i}" for i in range(4)]
    # Per item: caption, DOP caption, dropout caption, DOP dropout caption (the last two shared).
    assert len(theirs) == 4 * 4
    ours = list(texts.values()) + list(dops.values())
    for cached in theirs:
        assert len(_matches(cached, ours)) == 1, sorted(cached)
    # And each of ours is one of theirs: the DOP embeddings are not the plain ones.
    for mine in ours:
        assert any(_matches(cached, [mine]) for cached in theirs)
    # The trainer got each item's DOP embeddings with its prompt embeddings: those of one
    # caption (or of the dropout caption, both at once).
    stems = {key.split(".")[0] for key in trained}
    assert stems
    for stem in stems:
        prompt, dop = trained[f"{stem}.prompt"], trained[f"{stem}.dop"]
        pairs = [
            caption for caption in texts
            if prompt.shape == texts[caption]["embeds"].shape and np.allclose(prompt, texts[caption]["embeds"], atol=1e-5)
            and dop.shape == dops[caption]["embeds"].shape and np.allclose(dop, dops[caption]["embeds"], atol=1e-5)
        ]
        assert len(pairs) == 1, stem
        assert pairs[0] in ("sks ", f"sks a photo of thing {stem[3:]}")


# AI Toolkit's trainer, or larder's (argv: the checkout, the job, "aitk" or "larder", an .npz,
# "controls" or "prompts", then flags: "raw" gives the model `use_raw_control_images` as the
# classes of Qwen-Image-Edit-Plus or FLUX.2 have it; "te_controls" gives it
# `encode_control_in_text_embeddings` as Qwen-Image-Edit's has it, with an `encode_prompt` whose
# embeddings move by the mean of the control image it is given), recording per item what the
# trainer receives in its batches: its control tensor (or list, `{stem}.{j}`), or its prompt
# embeddings and DOP prompt embeddings (where the job has them).
RECORD = (
    "import sys; from pathlib import Path; import numpy as np\n"
    "from larder.aitk.toolkit import enter, make_job, read_job, tolerate_broken_model_packages\n"
    "enter(Path(sys.argv[1])); tolerate_broken_model_packages()\n"
    "if sys.argv[3] == 'larder':\n"
    "    from larder.aitk.trainer import trainer_class; Trainer = trainer_class()\n"
    "else:\n"
    "    from extensions_built_in.sd_trainer.SDTrainer import SDTrainer as Trainer\n"
    "seen = {}\n"
    "class Recording(Trainer):\n"
    "    def hook_after_sd_init_before_load(self):\n"
    "        if 'raw' in sys.argv[6:]:\n"
    "            self.sd.use_raw_control_images = True\n"
    "        if 'te_controls' in sys.argv[6:]:\n"
    "            self.sd.encode_control_in_text_embeddings = True\n"
    "            plain = self.sd.encode_prompt\n"
    "            def encode_prompt(prompt, *args, control_images=None, **kwargs):\n"
    "                embeds = plain(prompt, *args, **kwargs)\n"
    "                if control_images is not None:\n"
    "                    embeds.text_embeds = embeds.text_embeds + control_images.float().mean()\n"
    "                return embeds\n"
    "            self.sd.encode_prompt = encode_prompt\n"
    "        return super().hook_after_sd_init_before_load()\n"
    "    def hook_train_loop(self, batch):\n"
    "        for b in batch if isinstance(batch, list) else [batch]:\n"
    "            for k, item in enumerate(b.file_items):\n"
    "                stem = Path(item.path).stem\n"
    "                if sys.argv[5] == 'controls' and b.control_tensor_list is not None:\n"
    "                    for j, t in enumerate(b.control_tensor_list[k]):\n"
    "                        seen[f'{stem}.{j}'] = t.float().numpy().copy()\n"
    "                elif sys.argv[5] == 'controls':\n"
    "                    seen[stem] = b.control_tensor[k].float().numpy().copy()\n"
    "                elif sys.argv[5] == 'clip':\n"
    "                    seen[stem] = b.clip_image_tensor[k].float().numpy().copy()\n"
    "                else:\n"
    "                    seen[stem + '.prompt'] = item.prompt_embeds.text_embeds[0].float().numpy().copy()\n"
    "                    if item.dop_prompt_embeds is not None:\n"
    "                        seen[stem + '.dop'] = item.dop_prompt_embeds.text_embeds[0].float().numpy().copy()\n"
    "        return super().hook_train_loop(batch)\n"
    "job = make_job(read_job(sys.argv[2]), {'sd_trainer': Recording}); job.run(); job.cleanup()\n"
    "np.savez(sys.argv[4], **seen)\n"
)


def _record(tmp_path, job, who, what, *flags):
    """Runs ``job`` with ``who``'s trainer recording ``what`` (see RECORD); returns the record."""
    out = tmp_path / f"{who}-{what}.npz"
    done = subprocess.run(
        [sys.executable, "-c", RECORD, AITK, job, who, str(out), what, *flags],
        cwd=tmp_path, env=fx.aitk_env(AITK, str(tmp_path)), capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, f"{who}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return dict(np.load(out))


# Flux Kontext (an edit model) with one control per image; SD1.5 with two control folders, whose
# controls AI Toolkit stacks per item. Each control has another size than its image (one has
# transparency), and is resized and cropped with it, as AI Toolkit's loader does.
@pytest.mark.parametrize("kind, family, folders", [("flux_kontext", "flux", 1), ("sd15", "sd15", 2)])
def test_an_edit_job_trains_on_the_control_images_ai_toolkit_gives_its_trainer(tmp_path, models, kind, family, folders):
    model = models(family)
    data = tmp_path / "data"
    fx.make_images(str(data))
    controls = [tmp_path / f"controls{k}" for k in range(folders)]
    for k, folder in enumerate(controls):
        fx.make_controls(str(folder), size=[(80, 72), (96, 48)][k], rgba=[(1,), (2,)][k])
    recorded = {}
    for who in ("larder", "aitk"):
        job = fx.aitk_job(
            kind, f"edit-{who}", tmp_path / "output", data, model, steps=1, process_type="sd_trainer",
            control_path=[str(c) for c in controls], control_transparent_color=[255, 0, 0],
        )
        # One step of the four images: every item's control is seen once.
        job["config"]["process"][0]["train"]["batch_size"] = 4
        path = fx.write_job(job, str(tmp_path / f"edit-{who}.yaml"))
        recorded[who] = _record(tmp_path, path, who, "controls")
        assert (tmp_path / "output" / f"edit-{who}" / f"edit-{who}.safetensors").is_file()

    ours, theirs = recorded["larder"], recorded["aitk"]
    assert sorted(ours) == sorted(theirs) == [f"img{i}" for i in range(4)]
    shape = (3, 64, 64) if folders == 1 else (folders, 3, 64, 64)
    for stem in ours:
        assert ours[stem].shape == theirs[stem].shape == shape
        # Both resize with the cubic filter (a = -0.5), in different integer arithmetic: a value
        # may round one 8-bit level apart, and at the 255-to-0 edges of these patterns a few
        # (measured: 0.7-1.7% of values) up to 11 levels apart.
        levels = np.abs(ours[stem] - theirs[stem]) * 255
        assert levels.max() <= 12 and (levels > 1.01).mean() < 0.025 and levels.mean() < 0.1, (stem, levels.max())
    # The transparent band of img1's first control is the background colour.
    first = ours["img1"] if folders == 1 else ours["img1"][0]
    assert np.allclose(first[:, :10, :], np.array([1.0, 0.0, 0.0])[:, None, None], atol=1.01 / 255)


# A model that takes its controls at their own size (the tiny SD1.5 model given
# `use_raw_control_images`, as Qwen-Image-Edit-Plus's class has it) with two controls per image,
# of other sizes from image to image; and controls scaled to 512x512 (`full_size_control_images:
# false`). Batches of four, so that every item is seen in one step.
@pytest.mark.parametrize("mode", ["raw", "512"])
def test_controls_at_their_own_size_or_at_512_are_the_ones_ai_toolkit_gives_its_trainer(tmp_path, sd15, mode):
    data = tmp_path / "data"
    fx.make_images(str(data))
    folders = [tmp_path / "controls0", tmp_path / "controls1"] if mode == "raw" else [tmp_path / "controls0"]
    sizes = [[(80, 72), (40, 56), (64, 64), (33, 90)], [(96, 48), (24, 24), (70, 50), (64, 80)]]
    for folder, size in zip(folders, sizes):
        fx.make_controls(str(folder), size=size, rgba=(1,))
    extra = {} if mode == "raw" else {"full_size_control_images": False}
    flags = ["raw"] if mode == "raw" else []
    recorded = {}
    for who in ("larder", "aitk"):
        job = fx.aitk_job(
            "sd15", f"{mode}-{who}", tmp_path / "output", data, sd15, steps=1, process_type="sd_trainer",
            control_path=[str(c) for c in folders], control_transparent_color=[255, 0, 0], **extra,
        )
        job["config"]["process"][0]["train"]["batch_size"] = 4
        path = fx.write_job(job, str(tmp_path / f"{mode}-{who}.yaml"))
        recorded[who] = _record(tmp_path, path, who, "controls", *flags)

    ours, theirs = recorded["larder"], recorded["aitk"]
    if mode == "raw":
        # One tensor per control, each at its own size, exactly the decoded image.
        assert sorted(ours) == sorted(theirs) == [f"img{i}.{j}" for i in range(4) for j in range(2)]
        for key in ours:
            i, j = int(key[3]), int(key[-1])
            w, h = sizes[j][i]
            assert ours[key].shape == theirs[key].shape == (3, h, w), key
            assert np.array_equal(ours[key], theirs[key]), key
    else:
        assert sorted(ours) == sorted(theirs) == [f"img{i}" for i in range(4)]
        for stem in ours:
            assert ours[stem].shape == theirs[stem].shape == (3, 512, 512)
            # Upscaled (6-15x) with the cubic filter in two integer arithmetics (see the test
            # above); the two also weigh the last source row or column differently, which in
            # upscales this strong spreads over the last few output pixels: measured, at most
            # 27 levels, on 0.8-1.5% of values, 0.06-0.09 levels on average.
            levels = np.abs(ours[stem] - theirs[stem]) * 255
            assert levels.max() <= 32 and (levels > 1.01).mean() < 0.025 and levels.mean() < 0.12, (stem, levels.max())


def test_text_embeddings_of_a_model_that_encodes_its_controls_are_the_ones_ai_toolkit_caches(tmp_path, sd15):
    # img0 and img1 share a caption and differ in their control image: AI Toolkit caches one
    # embedding per item (caption and controls), and so does larder.
    data = tmp_path / "data"
    fx.make_images(str(data))
    (data / "img1.txt").write_text((data / "img0.txt").read_text())
    fx.make_controls(str(tmp_path / "controls"), rgba=())
    recorded = {}
    for who in ("larder", "aitk"):
        job = fx.aitk_job(
            "sd15", f"te-{who}", tmp_path / "output", data, sd15, steps=1, process_type="sd_trainer",
            control_path=str(tmp_path / "controls"),
        )
        job["config"]["process"][0]["train"]["batch_size"] = 4
        job["config"]["process"][0]["train"]["cache_text_embeddings"] = True
        path = fx.write_job(job, str(tmp_path / f"te-{who}.yaml"))
        recorded[who] = _record(tmp_path, path, who, "prompts", "te_controls")
    ours, theirs = recorded["larder"], recorded["aitk"]
    assert sorted(ours) == sorted(theirs) == [f"img{i}.prompt" for i in range(4)]
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # Same caption, other control: other embedding.
    assert np.abs(ours["img0.prompt"] - ours["img1.prompt"]).max() > 1e-3


def test_one_raw_control_per_item_of_other_sizes_in_a_batch_stops_naming_them(tmp_path, sd15):
    # AI Toolkit stacks a single raw-size control per item into one tensor (torch.cat fails on
    # other sizes); larder stops at that batch with the items, their sizes and the way out.
    data = tmp_path / "data"
    fx.make_images(str(data))
    fx.make_controls(str(tmp_path / "controls"), size=[(80, 72), (40, 56), (64, 64), (33, 90)])
    job = fx.aitk_job("sd15", "mixed", tmp_path / "output", data, sd15, steps=1, process_type="sd_trainer", control_path=str(tmp_path / "controls"))
    job["config"]["process"][0]["train"]["batch_size"] = 4
    done = subprocess.run(
        [sys.executable, "-c", RECORD, AITK, fx.write_job(job, str(tmp_path / "mixed.yaml")), "larder", str(tmp_path / "r.npz"), "controls", "raw"],
        cwd=tmp_path, env=fx.aitk_env(AITK, str(tmp_path)), capture_output=True, text=True, timeout=900,
    )
    assert done.returncode != 0
    assert "ConfigError" in done.stderr, done.stderr[-3000:]
    assert "same size" in done.stderr and "img3.png 33x90" in done.stderr and "batch_size 1" in done.stderr, done.stderr[-3000:]


def test_a_resumed_job_continues_the_exact_data_order(tmp_path, sd15):
    data = tmp_path / "data"
    fx.make_images(str(data), n=6)
    whole, halves = tmp_path / "whole.jsonl", tmp_path / "halves.jsonl"
    _run(["run", _job(tmp_path, sd15, "whole", data, steps=8), "--aitk", AITK], tmp_path, {"LARDER_AITK_BATCH_LOG": str(whole)})
    _run(["run", _job(tmp_path, sd15, "halves", data, steps=4), "--aitk", AITK], tmp_path, {"LARDER_AITK_BATCH_LOG": str(halves)})
    _run(["run", _job(tmp_path, sd15, "halves", data, steps=8), "--aitk", AITK], tmp_path, {"LARDER_AITK_BATCH_LOG": str(halves)})
    order = lambda path: [(b["epoch"], b["index"], b["items"]) for b in _log(path)]  # noqa: E731
    # Eight steps over six images cross an epoch boundary; stopped after four and resumed,
    # the run serves the same eight batches in the same order.
    assert len(order(whole)) == 8
    assert order(halves) == order(whole)
    assert {e for e, _, _ in order(whole)} == {0, 1}


def test_two_ranks_serve_their_shares_take_equal_steps_and_resume_the_exact_order(tmp_path, sd15):
    """AI Toolkit's trainer on two CPU ranks under torchrun (gloo), with accelerate's GPU rule
    for frozen modules (aitk_cpu_ranks.py says why). Five images, batch 1: an epoch is five
    global batches, which two ranks cannot split evenly."""
    data = tmp_path / "data"
    fx.make_images(str(data), n=5)
    log = tmp_path / "ranks.jsonl"
    ranks = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             str(Path(__file__).with_name("aitk_cpu_ranks.py"))]
    outputs = []
    # Two steps, then the same job resumed to five: across the epoch boundary.
    for steps in (2, 5):
        env = fx.aitk_env(AITK, str(tmp_path))
        env["LARDER_AITK_BATCH_LOG"] = str(log)
        done = subprocess.run(
            [*ranks, "run", _job(tmp_path, sd15, "ranks", data, steps=steps), "--aitk", AITK],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        outputs.append(done.stdout + done.stderr)
    assert (tmp_path / "output" / "ranks" / "ranks.safetensors").is_file()
    # Rank 0 prepared the store (encoding all five images on the first run, none on the
    # resumed one); rank 1 waited for it.
    assert [len(re.findall(r"larder: train store .*: 5 items", out)) for out in outputs] == [1, 1]
    assert "5 entries computed, 0 reused" in outputs[0] and "0 entries computed, 5 reused" in outputs[1]

    served = {rank: [(b["epoch"], b["index"], b["items"]) for b in _log(log) if b["rank"] == rank] for rank in (0, 1)}
    # Equal step counts: each rank trained on five batches, two before the stop, three after.
    assert [len(served[0]), len(served[1])] == [5, 5]
    # The global order, as one process serves it: rank r takes global batches r, r + 2, ...,
    # and the rank short of a batch at an epoch's end repeats the epoch's first.
    store = larder.Store.open(tmp_path / "output" / "ranks" / ".larder" / "store" / "train")
    paths = {item["id"]: item["path"] for item in store.items()}
    order = larder.DataLoader(store, batch_size=1, shuffle=True, seed=0)
    epochs = []
    for _ in range(2):
        epochs.append([[paths[int(i)] for i in batch["items"]] for batch in order])
    assert all(sorted(sum(epoch, [])) == sorted(str(p) for p in data.glob("*.png")) for epoch in epochs)
    assert [items for _, _, items in served[0]] == [epochs[0][0], epochs[0][2], epochs[0][4], epochs[1][0], epochs[1][2]]
    assert [items for _, _, items in served[1]] == [epochs[0][1], epochs[0][3], epochs[0][0], epochs[1][1], epochs[1][3]]
    assert [e for e, _, _ in served[0]] == [e for e, _, _ in served[1]] == [0, 0, 0, 1, 1]


def _adapter_job(tmp, model, vision, data, refs, name, cached, process_type="larder_sd_trainer", **train):
    """An IP-Adapter trained from scratch (no LoRA) on the tiny CLIP's projected image
    embeddings, with each image's CLIP image in ``refs``; ``train`` adds keys to the train
    section."""
    job = fx.aitk_job("sd15", name, tmp / "output", data, model, process_type=process_type,
                      clip_image_path=str(refs), cache_clip_vision_to_disk=cached)
    process = job["config"]["process"][0]
    del process["network"]
    process["adapter"] = {"type": "ip", "clip_layer": "image_embeds", "image_encoder_path": str(vision), "train": True}
    process["train"].update(train)
    return fx.write_job(job, str(tmp / f"{name}.yaml"))


def _add_dataset(job, dataset):
    """Adds to the job file ``job`` the dataset ``dataset`` makes of its first one."""
    import yaml

    with open(job) as f:
        document = yaml.safe_load(f)
    datasets = document["config"]["process"][0]["datasets"]
    datasets.append(dataset(datasets[0]))
    return fx.write_job(document, job)


@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory):
    return fx.build_tiny_clip_vision(str(tmp_path_factory.mktemp("models") / "tiny-clip-vision"))


CLIP_SIZES = [(90, 40), (50, 70), (64, 64), (33, 47)]


def test_cached_clip_vision_embeddings_are_the_ones_ai_toolkit_caches_and_an_adapter_trains_on_them(tmp_path, sd15, clip_vision):
    data, refs, log = tmp_path / "data", tmp_path / "refs", tmp_path / "batches.jsonl"
    fx.make_images(str(data))
    fx.make_clip_images(str(refs), CLIP_SIZES)
    # do_cfg: each step also takes an item's unconditional embedding (of noise images, as the
    # IP-Adapter draws noise for a dropped image: AI Toolkit caches twenty).
    job = _adapter_job(tmp_path, sd15, clip_vision, data, refs, "ip", cached=True, do_cfg=True)
    done = _run(["run", job, "--aitk", AITK], tmp_path, {"LARDER_AITK_BATCH_LOG": str(log)})
    assert "4 items, 8 entries computed, 0 reused" in done.stdout + done.stderr
    assert "20 unconditional CLIP vision embeddings computed" in done.stdout + done.stderr
    assert (tmp_path / "output" / "ip" / "ip.safetensors").is_file()
    assert len(_log(log)) == 2
    unconditional = sorted((tmp_path / "output" / "ip" / ".larder" / "clip_unconditional" / "train").glob("*.safetensors"))
    assert len(unconditional) == 20
    written = {path: path.stat().st_mtime_ns for path in unconditional}
    stored = _store_latents(tmp_path / "output" / "ip" / ".larder" / "store" / "train", field="clip")

    # AI Toolkit's own data path writes its CLIP vision cache beside the CLIP images. (At the
    # commit tested its run then stops at the first batch, whose collation reads the
    # clip_image_tensor its caching deleted: AI Toolkit alone cannot train on cached CLIP
    # embeddings. Its exit status is not what this test is about.)
    own = _adapter_job(tmp_path, sd15, clip_vision, data, refs, "own", cached=True, process_type="sd_trainer")
    subprocess.run([sys.executable, "-c", OWN_DATA_PATH, AITK, own], cwd=tmp_path, env=fx.aitk_env(AITK, str(tmp_path)),
                   capture_output=True, text=True, timeout=900)
    from safetensors.numpy import load_file

    for i in range(4):
        (cache,) = (refs / "_clip_vision_cache").glob(f"img{i}_*.safetensors")
        theirs = load_file(str(cache))["image_embeds"]
        ours = stored[str(data / f"img{i}.png")]
        assert ours.shape == theirs.shape == (1, 32)
        # One squared pixel in a thousand may differ by one level from Pillow's resize.
        np.testing.assert_allclose(ours, theirs, atol=1e-4, err_msg=f"img{i}")

    # Content-addressed: a second run encodes nothing, the unconditional embeddings included.
    done = _run(["run", job, "--aitk", AITK], tmp_path)
    assert "4 items, 0 entries computed, 8 reused" in done.stdout + done.stderr
    assert "20 unconditional CLIP vision embeddings reused" in done.stdout + done.stderr
    assert {path: path.stat().st_mtime_ns for path in unconditional} == written


def test_clip_images_without_cached_embeddings_reach_the_adapter_as_ai_toolkit_loads_them(tmp_path, sd15, clip_vision):
    data, refs = tmp_path / "data", tmp_path / "refs"
    fx.make_images(str(data))
    fx.make_clip_images(str(refs), CLIP_SIZES)
    # img3 has no CLIP image: in a batch with others AI Toolkit gives it zeros.
    (refs / "img3.png").unlink()
    # The clip_image_tensor each trainer gets in one step of the four images: AI Toolkit's own
    # load_clip_image and batch, and larder's stored squared image through the adapter's
    # processor.
    recorded = {}
    for who in ("larder", "aitk"):
        job = _adapter_job(tmp_path, sd15, clip_vision, data, refs, f"ip-{who}", cached=False,
                           process_type="sd_trainer", batch_size=4, steps=1)
        recorded[who] = _record(tmp_path, job, who, "clip")
        assert (tmp_path / "output" / f"ip-{who}" / f"ip-{who}.safetensors").is_file()
    ours, theirs = recorded["larder"], recorded["aitk"]
    assert sorted(ours) == sorted(theirs) == [f"img{i}" for i in range(4)]
    for stem in ours:
        assert ours[stem].shape == theirs[stem].shape == (3, 32, 32)
        # Equal but where the squaring rounds one pixel a level apart from Pillow's.
        differ = np.abs(ours[stem] - theirs[stem]) > 1e-3
        assert differ.mean() < 0.01 and np.abs(ours[stem] - theirs[stem]).max() < 0.02, stem
    assert not ours["img3"].any() and ours["img0"].any()


def test_a_group_mixing_datasets_with_and_without_clip_images_stops_before_loading_the_model(tmp_path, sd15, clip_vision):
    fx.make_images(str(tmp_path / "data"))
    fx.make_images(str(tmp_path / "more"))
    fx.make_clip_images(str(tmp_path / "refs"), CLIP_SIZES)
    job = _adapter_job(tmp_path, sd15, clip_vision, tmp_path / "data", tmp_path / "refs", "mixed", cached=True)
    job = _add_dataset(job, lambda first: {**first, "folder_path": str(tmp_path / "more"), "clip_image_path": None})
    done = _run(["run", job, "--aitk", AITK], tmp_path, expect=2)
    assert "config.process[0].datasets[0].clip_image_path" in done.stderr and "not served" in done.stderr
    assert "Loading" not in done.stdout + done.stderr, "stopped before the weights load"


def test_regularisation_steps_of_an_adapter_with_cached_clip_embeddings_train_on_unconditional_ones(tmp_path, sd15, clip_vision):
    # AI Toolkit's trainer gives a regularisation step of an adapter with cached CLIP embeddings
    # unconditional ones, loading each as a file the batch names; its own batches hold loaded
    # embeddings there (or none) and the step fails. larder's regularisation batches name the
    # training datasets' unconditional files, so the step trains.
    data, reg, log = tmp_path / "data", tmp_path / "reg", tmp_path / "batches.jsonl"
    fx.make_images(str(data))
    fx.make_images(str(reg), n=3)
    fx.make_clip_images(str(tmp_path / "refs"), CLIP_SIZES)
    job = _adapter_job(tmp_path, sd15, clip_vision, data, tmp_path / "refs", "ip-reg", cached=True, do_cfg=True, steps=4)
    job = _add_dataset(job, lambda first: {"folder_path": str(reg), "caption_ext": "txt", "resolution": [64], "is_reg": True})
    _run(["run", job, "--aitk", AITK], tmp_path, {"LARDER_AITK_BATCH_LOG": str(log)})
    assert (tmp_path / "output" / "ip-reg" / "ip-reg.safetensors").is_file()
    served = _log(log)
    assert "reg" in [b["group"] for b in served]
    assert all(Path(p).parent == reg for b in served if b["group"] == "reg" for p in b["items"])


def test_a_regularisation_dataset_is_served_at_the_steps_ai_toolkit_takes_it(tmp_path, sd15):
    data, reg, log = tmp_path / "data", tmp_path / "reg", tmp_path / "batches.jsonl"
    fx.make_images(str(data))
    fx.make_images(str(reg), n=3)
    job = _add_dataset(_job(tmp_path, sd15, "reg", data, steps=6), lambda first: {**first, "folder_path": str(reg), "is_reg": True})
    _run(["run", job, "--aitk", AITK], tmp_path, {"LARDER_AITK_BATCH_LOG": str(log)})
    assert (tmp_path / "output" / "reg" / "reg.safetensors").is_file()
    served = _log(log)
    # AI Toolkit takes a regularisation batch at each even step that is not a save step (step
    # 0 is one: save_every divides it).
    assert [b["group"] for b in served] == ["train", "train", "reg", "train", "reg", "train"]
    for b in served:
        assert {Path(p).parent for p in b["items"]} == {reg if b["group"] == "reg" else data}, b


# A pitch-preserving audio stretch and image augmentations: larder does not do them yet; the
# run stops before the model's weights load.
@pytest.mark.parametrize("arch, extra, key, reason", [
    (None, {"num_frames": 5, "do_audio": True, "audio_preserve_pitch": True}, "audio_preserve_pitch", "pitch"),
    (None, {"augments": [{"method": "ColorJitter"}]}, "augments", "augmentations"),
])
def test_a_job_asking_for_what_larder_cannot_serve_stops_before_loading_the_model(tmp_path, sd15, arch, extra, key, reason):
    data = tmp_path / "data"
    fx.make_images(str(data))
    fx.make_controls(str(tmp_path / "controls"))
    job = fx.aitk_job("sd15", "unserved", tmp_path / "output", data, sd15, process_type="sd_trainer", **extra)
    if arch:
        job["config"]["process"][0]["model"]["arch"] = arch
    done = _run(["run", fx.write_job(job, str(tmp_path / "unserved.yaml")), "--aitk", AITK], tmp_path, expect=2)
    assert f"config.process[0].datasets[0].{key}" in done.stderr
    assert reason in done.stderr
    # AI Toolkit's model classes print "Loading ..." as their weights load.
    assert "Loading" not in done.stdout + done.stderr, "stopped before the weights load"
    assert not (tmp_path / "output" / "unserved" / "unserved.safetensors").exists()


def test_install_puts_the_process_type_where_ai_toolkit_finds_it_and_uninstall_removes_it(tmp_path):
    from larder.aitk import install, uninstall

    checkout = tmp_path / "ai-toolkit"
    shutil.copytree(AITK, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    folder = install(checkout)
    assert folder == checkout / "extensions" / "larder_sd_trainer"
    # AI Toolkit imports `extensions.<package>` from its root and reads AI_TOOLKIT_EXTENSIONS.
    script = (
        "import importlib, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "m = importlib.import_module('extensions.larder_sd_trainer')\n"
        "(ext,) = m.AI_TOOLKIT_EXTENSIONS\n"
        "from extensions_built_in.sd_trainer.SDTrainer import SDTrainer\n"
        "print(ext.uid, issubclass(ext.get_process(), SDTrainer))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(checkout)],
        env=fx.aitk_env(str(checkout), str(tmp_path)), capture_output=True, text=True, timeout=600,
    )
    assert done.stdout.split() == ["larder_sd_trainer", "True"], done.stderr[-3000:]
    assert uninstall(checkout) is True
    assert not folder.exists()
    assert uninstall(checkout) is False
    # A folder of that name that larder did not write is neither overwritten nor removed.
    folder.mkdir()
    (folder / "__init__.py").write_text("# someone else's\n")
    with pytest.raises(FileExistsError):
        install(checkout)
    with pytest.raises(FileExistsError):
        uninstall(checkout)


def test_a_checkout_that_is_not_ai_toolkit_is_refused_naming_where_it_came_from(tmp_path):
    from larder.aitk import find_aitk

    with pytest.raises(FileNotFoundError, match="--aitk names"):
        find_aitk(tmp_path)
