"""Building blocks for the AI Toolkit drop-in tests: tiny random models, a dataset, a job, and
the environment to run AI Toolkit's trainer in on a CPU machine without network.

The models are random and tiny (a few MB, seconds to build) and made from configs only, so no
test downloads anything; their shapes follow the real architectures closely enough for AI
Toolkit's loaders (arch sd1 and flux). torch, diffusers, transformers, open_clip and yaml are
imported inside the functions that use them, so this module imports without the AI Toolkit stack
(scripts/requirements-aitk.txt) and a test can skip cleanly where it is missing.
"""

import gzip
import json
import os
import string
import tempfile

import numpy as np

# clamp() in diffusers' DiagonalGaussianDistribution floors the log-variance at -30.
LOGVAR_FLOOR = -30.0


def aitk_path():
    """The AI Toolkit checkout named by $AITK_PATH, or None where it is unset or not a checkout."""
    path = os.environ.get("AITK_PATH")
    if path and os.path.isfile(os.path.join(path, "run.py")) and os.path.isdir(os.path.join(path, "toolkit")):
        return os.path.abspath(path)
    return None


def aitk_env(aitk_path, tmp):
    """os.environ plus what a subprocess running AI Toolkit needs here: no network, the CPU, and
    byte-code written under ``tmp`` (AI Toolkit's tree may be read-only). ``aitk_path`` goes on
    PYTHONPATH so its packages (toolkit, jobs, extensions_built_in) import from any script."""
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DISABLE_TELEMETRY": "YES",
        # albumentations otherwise checks PyPI for a newer version at import.
        "NO_ALBUMENTATIONS_UPDATE": "1",
        # AI Toolkit ignores the job's `device:` and takes accelerate's device, the GPU where there is one.
        "ACCELERATE_USE_CPU": "true",
        "PYTHONPYCACHEPREFIX": os.path.join(tmp, "pycache"),
        "PYTHONPATH": os.pathsep.join(p for p in (aitk_path, os.environ.get("PYTHONPATH")) if p),
    })
    return env


def make_images(folder, n=4, size=64, captions=True):
    """``n`` distinct ``size``x``size`` PNGs img{i}.png (a gradient whose colour and direction
    depend on i, with a square at an i-dependent place), and img{i}.txt "a photo of thing {i}"."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    for i in range(n):
        t = np.broadcast_to(ramp[None, :] if i % 2 == 0 else ramp[:, None], (size, size))[..., None]
        colour = np.array([(37 * i) % 256, (91 * i + 60) % 256, (173 * i + 120) % 256], np.float32)
        pixels = t * colour + (1.0 - t) * (255.0 - colour)
        x, y = (size // 8 * (i % 5), size // 8 * ((i * 3) % 5))
        pixels[y:y + size // 3, x:x + size // 3] = 255.0 if i % 3 else 0.0
        Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"img{i}.png"))
        if captions:
            with open(os.path.join(folder, f"img{i}.txt"), "w") as f:
                f.write(f"a photo of thing {i}")


def make_controls(folder, n=4, size=(80, 72), rgba=(1,)):
    """Control images img{i}.png for ``make_images``' images: ``size`` (width, height), or a
    list of one size per image, other than their image's; those in ``rgba`` have an alpha
    channel with fully and partly transparent regions, which AI Toolkit composites over
    ``control_transparent_color``."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        w, h = size[i] if isinstance(size, list) else size
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        pixels = np.stack([(xs * (3 + i)) % 256, (ys * (5 + 2 * i)) % 256, ((xs + ys) * 7 + 40 * i) % 256], axis=-1)
        if i in rgba:
            alpha = np.full((h, w, 1), 255.0, np.float32)
            alpha[: h // 3] = 0.0
            alpha[h // 3 : h // 2] = 128.0
            pixels = np.concatenate([pixels, alpha], axis=-1)
        Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"img{i}.png"))


def aitk_job(kind, name, training_folder, dataset_folder, model_path, steps=2,
             process_type="larder_sd_trainer", **dataset_extra):
    """A LoRA training job for AI Toolkit as a dict: ``kind`` "sd15", "flux", "flux_kontext"
    (the tiny Flux model) or "wan21", ``steps`` steps of batch 1 at 64 px on the CPU in fp32, no sampling;
    ``dataset_extra`` adds keys to the dataset."""
    arch, scheduler = {
        "sd15": ("sd1", "ddpm"),
        "flux": ("flux", "flowmatch"),
        # Flux Kontext (an edit model: the control image's latents join the target's) loads
        # the same folders as Flux.
        "flux_kontext": ("flux_kontext", "flowmatch"),
        "wan21": ("wan21", "flowmatch"),
    }[kind]
    process = {
        "type": process_type,
        "training_folder": str(training_folder),
        "device": "cpu",
        "performance_log_every": 0,
        "network": {"type": "lora", "linear": 4, "linear_alpha": 4},
        "save": {"dtype": "float32", "save_every": 1000, "max_step_saves_to_keep": 4, "push_to_hub": False},
        "datasets": [{
            "folder_path": str(dataset_folder),
            "caption_ext": "txt",
            "caption_dropout_rate": 0.0,
            "resolution": [64],
            "num_workers": 0,
            "cache_latents_to_disk": True,
            **dataset_extra,
        }],
        "train": {
            "batch_size": 1,
            "steps": steps,
            "gradient_accumulation_steps": 1,
            "train_unet": True,
            "train_text_encoder": False,
            "gradient_checkpointing": False,
            "noise_scheduler": scheduler,
            "optimizer": "adamw",
            "lr": 1e-4,
            "dtype": "fp32",
            "disable_sampling": True,
            "skip_first_sample": True,
        },
        "model": {"name_or_path": str(model_path), "arch": arch},
        # Never reached (disable_sampling), but AI Toolkit reads the section.
        "sample": {"sampler": scheduler, "sample_every": 100000, "width": 64, "height": 64,
                   "prompts": ["a photo of thing 0"], "sample_steps": 2},
        "logging": {"log_every": 1, "use_wandb": False},
    }
    return {"job": "extension", "config": {"name": name, "process": [process]},
            "meta": {"name": "[name]", "version": "1.0"}}


def write_job(job, path):
    """Writes ``job`` as YAML (the form AI Toolkit's run.py takes) and returns ``path``."""
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(job, f, sort_keys=False)
    return str(path)


def build_tiny_sd15(out_dir):
    """A tiny random SD1.5-style StableDiffusionPipeline saved in ``out_dir``; returns its path."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer, text_encoder = _tiny_clip()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = _tiny_vae(latent_channels=4, scaling_factor=0.18215)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return str(out_dir)


def build_tiny_flux(out_dir):
    """A tiny random Flux-style FluxPipeline (CLIP and T5 text encoders, 16-channel VAE without
    quant_conv, like Flux's) saved in ``out_dir``; returns its path."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer, text_encoder = _tiny_clip()
    tokenizer_2 = _tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8))
    vae = _tiny_vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                    use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return str(out_dir)


def build_tiny_wan21(out_dir):
    """A tiny random Wan 2.1-style WanPipeline (UMT5 text encoder, a 3D transformer, a video VAE
    with Wan's 16 latent channels, 8x spatial and 4x temporal compression) saved in ``out_dir``;
    returns its path. The VAE's posterior has variance ~0, as ``_tiny_vae``'s."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = _tiny_t5_tokenizer()
    # AI Toolkit loads the tokenizer with T5's 100 extra ids added.
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer) + 100, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    with torch.no_grad():
        vae.quant_conv.weight[16:] = 0.0
        vae.quant_conv.bias[16:] = LOGVAR_FLOOR
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return str(out_dir)


def make_clips(folder, lengths=((30, 30), (24, 24), (40, 20)), size=64):
    """MPEG-4 clips clip{i}.mp4 written by OpenCV, (frames, fps) from ``lengths``, each frame
    a gray level and a split that move with the frame index; captions clip{i}.txt."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    for i, (frames, fps) in enumerate(lengths):
        writer = cv2.VideoWriter(os.path.join(folder, f"clip{i}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
        for f in range(frames):
            frame = np.full((size, size, 3), (8 * f + 60 * i) % 256, np.uint8)
            frame[:, (2 * f) % size:] = 255 - frame[:, (2 * f) % size:]
            frame[: size // 4, :, i % 3] = 255
            writer.write(frame)
        writer.release()
        with open(os.path.join(folder, f"clip{i}.txt"), "w") as f:
            f.write(f"a clip of thing {i}")


#: The bars of ``bar_code``: one per bit of the frame index.
BAR_CODE_BITS = 8


def bar_code(i, size):
    """A ``size``x``size`` gray frame showing ``i`` as vertical bars, one per bit (light = 1,
    most significant on the left), wide enough to survive lossy coding."""
    bits = np.array([(i >> (BAR_CODE_BITS - 1 - b)) & 1 for b in range(BAR_CODE_BITS)], np.uint8) * 255
    row = np.repeat(bits, size // BAR_CODE_BITS)
    return np.ascontiguousarray(np.broadcast_to(row[None, :, None], (size, size, 3)))


def make_talking_clips(folder, specs, size=64):
    """MP4s with sound, written by PyAV: ``specs`` maps a file name to (frames, fps, sample
    rate, channels). Frame i shows i as a ``bar_code``; the AAC audio is a rising tone,
    louder over time, each channel at its own pitch. Captions <stem>.txt."""
    import av

    os.makedirs(folder, exist_ok=True)
    for name, (frames, fps, rate, channels) in specs.items():
        out = av.open(os.path.join(folder, name), "w")
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size, size, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "stereo" if channels == 2 else "mono"
        for i in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(bar_code(i, size), format="rgb24")):
                out.mux(packet)
        t = np.arange(int(frames / fps * rate)) / rate
        tone = np.stack([0.2 * (1 + t) * np.sin(2 * np.pi * (220 * (c + 1) + 50 * t) * t) for c in range(channels)])
        tone = tone.astype(np.float32)
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp",
                                               layout=audio.layout.name)
            frame.sample_rate, frame.pts = rate, start
            for packet in audio.encode(frame):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)
        out.close()
        with open(os.path.join(folder, os.path.splitext(name)[0] + ".txt"), "w") as f:
            f.write(f"a clip that says {os.path.splitext(name)[0]}")


def build_tiny_clip_vision(out_dir):
    """A tiny random CLIPVisionModelWithProjection (32 px input, 2 layers, 32 wide) and its
    CLIPImageProcessor saved in ``out_dir``: an IP-Adapter's image encoder. Returns the path."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    CLIPVisionModelWithProjection(config).save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out_dir)
    return out_dir


def make_clip_images(folder, sizes):
    """CLIP images img{i}.png for ``make_images``' images, one per (width, height) in ``sizes``,
    none square: AI Toolkit squares them (a bicubic resize to the shorter side)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        ys, xs = np.mgrid[0:h, 0:w]
        pixels = np.stack([(xs * 7 + 30 * i) % 256, (ys * 5) % 256, ((xs + ys) * 3 + 50 * i) % 256], axis=-1)
        Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"img{i}.png"))


def _tiny_vae(latent_channels, **config):
    """A 4-level AutoencoderKL (8x downscale, as the real ones) whose posterior has variance
    ~0: AI Toolkit encodes with latent_dist.sample() and the tests compare its latents with the
    ones larder stored, so a sample must equal the mean (to ~1e-6). The layer that emits the
    posterior's moments (quant_conv, or the encoder's conv_out where there is none) gets weight 0
    and bias LOGVAR_FLOOR in its log-variance half, so std = exp(-15) ~ 3e-7."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **config)
    moments = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out
    with torch.no_grad():
        moments.weight[latent_channels:] = 0.0
        moments.bias[latent_channels:] = LOGVAR_FLOOR
    return vae


def _tiny_clip():
    """A CLIP tokenizer with the real 49408-token vocabulary and a 2-layer, 32-wide CLIP text
    encoder. The vocabulary comes from the BPE merges open_clip ships (the same ordering as
    openai/clip's vocab.json), so prompts tokenize as for real SD models, with no download."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as src:
        vocab, merges = _write_clip_vocab(src)
        tokenizer = CLIPTokenizer(vocab, merges, model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    return tokenizer, text_encoder


def _write_clip_vocab(folder):
    """vocab.json and merges.txt in ``folder`` from open_clip's bpe_simple_vocab_16e6.txt.gz, built
    as CLIP's own tokenizer builds its table: the 256 byte symbols, the same with </w>, one token
    per merge, then the two special tokens."""
    import open_clip

    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab, merges_path


def _bytes_to_unicode():
    """CLIP's (and GPT-2's) byte -> printable character table."""
    byte_values = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = byte_values[:]
    unprintable = [b for b in range(256) if b not in byte_values]
    byte_values += unprintable
    chars += [256 + n for n in range(len(unprintable))]
    return dict(zip(byte_values, map(chr, chars)))


def _tiny_t5_tokenizer():
    """A small Unigram T5 tokenizer (letters, digits, punctuation, a few words) built with
    `tokenizers`, standing in for T5's sentencepiece model, which would need a download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    pieces += [("▁" + c, -4.0) for c in string.ascii_lowercase]
    pieces += [("▁" + w, -1.0) for w in "a photo of tiny thing number the and cat dog".split()]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=512)
