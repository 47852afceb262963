"""Video datasets from Python: clips made here with OpenCV, each frame's index drawn into its
pixels, prepared by larder and served as [B, F, 3, H, W]; and, for the same clips and settings,
the frames AI Toolkit's own ``load_and_process_video`` (``$AITK_PATH``) picks."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import aitk_fixtures as fx

import larder

cv2 = pytest.importorskip("cv2", reason="did not run: opencv-python-headless is not installed (scripts/requirements-aitk.txt)")

AITK = fx.aitk_path()
BITS = fx.BAR_CODE_BITS
SIZE = 64


def write_clip(path, frames, fps):
    """An MPEG-4 clip whose frame i shows i as a bar code (``fx.bar_code``)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (SIZE, SIZE))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(fx.bar_code(i, SIZE))
    writer.release()


def frame_index(row):
    return sum(int(row[(2 * b + 1) * len(row) // (2 * BITS)] > 128) << (BITS - 1 - b) for b in range(BITS))


def clip_frames(clip):
    """The index drawn into each frame of a (F, 3, H, W) clip."""
    return [frame_index(frame[0, frame.shape[1] // 2]) for frame in clip]


CLIPS = {"long.mp4": (90, 30), "short.mp4": (4, 30), "slow.mp4": (40, 12)}

# Settings whose frames are a function of the clip: compared with AI Toolkit's frame for frame.
SETTINGS = {
    "spread": {"num_frames": 5},
    "repeats": {"num_frames": 7},
    "auto": {"auto_frame_count": True, "fps": 16},
    "auto_untrimmed": {"auto_frame_count": True, "fps": 16, "trim_auto_frame_count_tail": False},
    # Too short at 10 fps for 9 frames 3 apart (27 > 4 and 40 // 1 ≥ 9 for slow): per clip.
    "at_fps": {"num_frames": 9, "shrink_video_to_frames": False, "fps": 10},
}


def make_clips(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (frames, fps) in CLIPS.items():
        write_clip(folder / name, frames, fps)
    return folder


def larder_frames(tmp_path, settings):
    """{clip name: frame indices} of a larder store of the clips under ``settings``."""
    clips = make_clips(tmp_path / "clips")
    config = tmp_path / "v.yaml"
    dataset = {"folder_path": str(clips), "resolution": [SIZE], **settings}
    config.write_text(json.dumps({"datasets": [dataset]}))
    larder.prepare(config, tmp_path / "store")
    store = larder.Store.open(tmp_path / "store")
    items = store.items()
    out = {}
    for batch in larder.DataLoader(store, batch_size=1, shuffle=False):
        pixels = batch["pixels"]
        assert pixels.ndim == 5 and pixels.shape[2:] == (3, SIZE, SIZE), pixels.shape
        item = items[int(batch["items"][0])]
        name = item["path"].rsplit("/", 1)[-1]
        out[name] = clip_frames(pixels[0])
        assert item["frames"] == out[name], "the catalog records the frames stored"
    return out


def test_clips_are_served_stacked_with_the_frames_they_were_stored_with(tmp_path):
    frames = larder_frames(tmp_path, SETTINGS["spread"])
    assert frames == {"long.mp4": [0, 22, 44, 67, 89], "short.mp4": [0, 1, 2, 2, 3], "slow.mp4": [0, 10, 20, 29, 39]}
    loader = larder.DataLoader(tmp_path / "store", batch_size=3, shuffle=False, format="torch")
    (batch,) = list(loader)
    assert tuple(batch["pixels"].shape) == (3, 5, 3, SIZE, SIZE)


AITK_LOAD = textwrap.dedent("""
    import json, sys, types
    from torchvision import transforms
    from toolkit.dataloader_mixins import ImageProcessingDTOMixin

    DEFAULTS = dict(num_frames=1, shrink_video_to_frames=True, fps=24, auto_frame_count=False,
                    trim_auto_frame_count_tail=True, buckets=True, do_audio=False, audio_normalize=False,
                    audio_preserve_pitch=False, debug=False)

    def load(path, config):
        item = types.SimpleNamespace(path=path, dataset_config=config, augments=None, has_augmentations=False,
                                     num_frames=config.num_frames, temporal_compression=8, frame_count_snapper=None,
                                     flip_x=False, flip_y=False, scale_to_width=64, scale_to_height=64,
                                     crop_x=0, crop_y=0, crop_width=64, crop_height=64)
        item.get_auto_frame_count = types.MethodType(ImageProcessingDTOMixin.get_auto_frame_count, item)
        ImageProcessingDTOMixin.load_and_process_video(item, transforms.ToTensor())
        audio = getattr(item, "audio_data", None)
        return {
            "frames": (item.tensor * 255).round().byte().numpy().tolist(),
            "audio": audio["waveform"].numpy().tolist() if audio else None,
            "rate": audio["sample_rate"] if audio else None,
        }

    clips, every = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = {}
    for name, settings in every.items():
        config = types.SimpleNamespace(**{**DEFAULTS, **settings})
        out[name] = {clip: load(path, config) for clip, path in clips.items()}
    print(json.dumps(out))
""")



def aitk_load(tmp_path, paths, settings):
    """{setting: {clip name: {"frames", "audio", "rate"}}}: the clips ``paths`` ({name: path})
    as AI Toolkit's ``load_and_process_video`` loads them under each of ``settings`` (one
    process: AI Toolkit takes seconds to import)."""
    done = subprocess.run(
        [sys.executable, "-c", AITK_LOAD, json.dumps(paths), json.dumps(settings)],
        env=fx.aitk_env(AITK, str(tmp_path)), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def aitk_frames(tmp_path, settings):
    """{setting: {clip name: frame indices}} as AI Toolkit loads the clips under each of
    ``settings``."""
    clips = make_clips(tmp_path / "aitk-clips")
    every = aitk_load(tmp_path, {name: str(clips / name) for name in CLIPS}, settings)
    return {
        setting: {name: clip_frames(np.array(loaded["frames"], np.uint8)) for name, loaded in clips.items()}
        for setting, clips in every.items()
    }


@pytest.mark.skipif(AITK is None, reason="did not run: AITK_PATH does not name an AI Toolkit checkout (scripts/test sets it)")
def test_the_frames_are_the_ones_ai_toolkit_picks(tmp_path):
    every = aitk_frames(tmp_path, SETTINGS)
    for name, settings in SETTINGS.items():
        ours, theirs = larder_frames(tmp_path / name, settings), every[name]
        if name == "at_fps":
            # AI Toolkit draws the start unseeded; larder from its seed. The rest is the rule:
            # frames 3 apart (30 / 10 fps) from a start that leaves room for all nine.
            for clip in CLIPS:
                for frames in (ours[clip], theirs[clip]):
                    assert len(frames) == 9
                    if clip == "long.mp4":
                        assert all(b - a == 3 for a, b in zip(frames, frames[1:])), (clip, frames)
                        assert frames[-1] <= 89
            # The 4-frame clip is spread, and the 12 fps clip taken every frame: both fixed.
            assert ours["short.mp4"] == theirs["short.mp4"]
            assert ours["slow.mp4"][1] - ours["slow.mp4"][0] == theirs["slow.mp4"][1] - theirs["slow.mp4"][0] == 1
        else:
            assert ours == theirs, name


def test_a_video_vae_encodes_each_clip_once_and_the_store_serves_its_latents(tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers", reason="did not run: diffusers is not installed (scripts/requirements-aitk.txt)")
    torch.manual_seed(0)
    # A tiny random Wan-style video VAE: frames 1 + 2k in, 1 + k latent frames out, half size.
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[True]).eval()
    calls = []

    def encode(pixels):
        calls.append(pixels.shape)
        x = torch.from_numpy(pixels).permute(0, 2, 1, 3, 4)  # (N, 3, F, H, W), as the VAE takes
        with torch.no_grad():
            return vae.encode(x).latent_dist.mode()

    clips = make_clips(tmp_path / "clips")
    config = tmp_path / "v.yaml"
    config.write_text(json.dumps({"datasets": [{"folder_path": str(clips), "resolution": [SIZE], "num_frames": 5}]}))
    encoders = {"latent": larder.Encoder(encode, "tiny-wan-vae f32")}
    first = larder.prepare(config, tmp_path / "store", image_encoders=encoders, latent_codec="f32", encode_batch_size=2)
    assert all(shape[1:] == (5, 3, SIZE, SIZE) for shape in calls), calls
    again = larder.prepare(config, tmp_path / "store", image_encoders=encoders, latent_codec="f32")
    assert again["entries_computed"] == 0 and len(calls) == 2, "every clip's latents are reused"
    assert first["entries_computed"] == 6  # three clips: pixels and latents
    for batch in larder.DataLoader(tmp_path / "store", batch_size=3, shuffle=False, format="torch"):
        latent = batch["latent"]
        assert tuple(latent.shape) == (3, 4, 3, SIZE // 2, SIZE // 2)
        # What the VAE gives the stored frames, as AI Toolkit feeds it: x / 127.5 - 1.
        x = (batch["pixels"].float() / 127.5 - 1.0).permute(0, 2, 1, 3, 4)
        with torch.no_grad():
            expected = vae.encode(x).latent_dist.mode()
        assert torch.allclose(latent, expected, atol=1e-5), (latent - expected).abs().max()


# Spread frames stretch the window of the whole clip; auto_frame_count with its trimmed tail
# pads or cuts instead; audio_normalize scales the track first.
AUDIO_SETTINGS = {
    "spread": {"num_frames": 5, "fps": 16, "do_audio": True},
    "auto_normalized": {"auto_frame_count": True, "fps": 16, "do_audio": True, "audio_normalize": True},
}
TALKING = {"stereo.mp4": (48, 24, 44_100, 2), "mono.mp4": (30, 30, 16_000, 1)}


@pytest.mark.skipif(AITK is None, reason="did not run: AITK_PATH does not name an AI Toolkit checkout (scripts/test sets it)")
def test_the_audio_is_the_window_ai_toolkit_cuts_and_stretches(tmp_path):
    pytest.importorskip("av", reason="did not run: PyAV is not installed (scripts/requirements-aitk.txt)")
    clips = tmp_path / "talking"
    fx.make_talking_clips(str(clips), TALKING)
    theirs = aitk_load(tmp_path, {name: str(clips / name) for name in TALKING}, AUDIO_SETTINGS)
    for setting, settings in AUDIO_SETTINGS.items():
        config = tmp_path / f"{setting}.yaml"
        config.write_text(json.dumps({"datasets": [{"folder_path": str(clips), "resolution": [SIZE], **settings}]}))
        store = tmp_path / f"{setting}-store"
        larder.prepare(config, store)
        items = larder.Store.open(store).items()
        served = {}
        for batch in larder.DataLoader(store, batch_size=1, shuffle=False):
            name = items[int(batch["items"][0])]["path"].rsplit("/", 1)[-1]
            served[name] = (batch["audio"][0], int(batch["audio.sample_rate"][0]), clip_frames(batch["pixels"][0]))
        assert sorted(served) == sorted(TALKING)
        for name, (waveform, rate, frames) in served.items():
            aitk = theirs[setting][name]
            assert frames == clip_frames(np.array(aitk["frames"], np.uint8)), (setting, name)
            expected = np.array(aitk["audio"], np.float32)
            assert rate == aitk["rate"] == TALKING[name][2]
            assert waveform.shape == expected.shape == (2, round(len(frames) / settings["fps"] * rate)), (setting, name)
            np.testing.assert_allclose(waveform, expected, atol=1e-6, err_msg=f"{setting} {name}")
