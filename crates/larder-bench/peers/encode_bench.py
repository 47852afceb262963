"""The encoding benchmarks behind `larder bench-encode`, run in one Python process.

1. Pipeline overhead, with an encoder that costs nothing (a strided view of its input):
   - larder: `larder.prepare(..., image_encoders={"latent": Encoder(noop)})`, batches of
     `--batch` images of one bucket, pixels not stored;
   - AI Toolkit's caching loop (LatentCachingMixin.cache_latents_all_latents): per image, in
     order, in this process: PIL open, exif_transpose, convert("RGB"), resize BICUBIC to the
     bucket's scale-to size, crop, ToTensor + Normalize(0.5, 0.5) as a float32 C×H×W array,
     add the batch dimension, call the encoder, save one safetensors file with the latent and
     the info dict as metadata.
2. Latent bytes per item and error for each codec: a seeded 8×8-patch projection to 16
   channels (a VAE stand-in) run through larder with each codec, read back with the loader,
   compared with the encoder's f32 output.
3. Text-embedding cache size: CLIP-L shaped outputs (77×768, 2-byte floats) for generated
   captions, larder's store (one entry per distinct string, padding removed, plus the empty
   caption and, with shuffle_tokens, 4 shuffled variants per item) against one AI Toolkit
   file per item (padded embeddings, pooled, mask).

Usage: encode_bench.py <jpeg-folder> <work-folder> <resolution> <divisibility> <batch> <runs>
Prints one JSON object; the pipeline timings are lists with one entry per run.
"""

import json
import os
import shutil
import sys
import time

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

import larder
# The same pixel path as `larder bench-prepare`'s peer, written beside this script.
from aitk_prepare import aitk_pixels


def noop(pixels):
    # What a model that costs nothing returns: a latent-shaped view of its input.
    return pixels[:, :, ::8, ::8]


def busy(pixels):
    # A model that takes 20 ms per image on its device, as a VAE encode at 1024² does on a
    # fast GPU; sleeping releases the GIL, as a CUDA wait does.
    time.sleep(0.02 * len(pixels))
    return noop(pixels)


def aitk_loop(files, out, resolution, d, encode):
    os.makedirs(out, exist_ok=True)
    for path in files:
        img, (sw, sh, cx, cy, bw, bh) = aitk_pixels(path, resolution, d)
        # transforms.ToTensor() then Normalize([0.5], [0.5]).
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        x = (x - 0.5) / 0.5
        latent = np.ascontiguousarray(encode(x[None])[0])
        stem = os.path.splitext(os.path.basename(path))[0]
        info = {"filename": os.path.basename(path), "scale_to_width": str(sw), "scale_to_height": str(sh),
                "crop_x": str(cx), "crop_y": str(cy), "crop_width": str(bw), "crop_height": str(bh),
                "latent_space_version": "bench", "latent_version": "1"}
        save_file({"latent": latent}, os.path.join(out, f"{stem}.safetensors"), metadata=info)
    return len(files)


def pipeline(folder, work, resolution, d, batch, runs):
    runs = [pipeline_once(folder, work, resolution, d, batch) for _ in range(runs)]
    out = {"images": runs[0]["images"]}
    for key in runs[0]:
        if key.endswith("seconds"):
            out[key] = [r[key] for r in runs]
    return out


def pipeline_once(folder, work, resolution, d, batch):
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))
    config = os.path.join(work, "encode.yaml")
    with open(config, "w") as f:
        f.write(f"datasets:\n  - folder_path: {folder}\n    resolution: {resolution}\nlarder:\n  divisibility: {d}\n")
    store = os.path.join(work, "encode-store")
    timings = []
    for b, fn in ((batch, noop), (1, noop), (batch, busy)):
        shutil.rmtree(store, ignore_errors=True)
        start = time.perf_counter()
        report = larder.prepare(config, store, image_encoders={"latent": larder.Encoder(fn, fn.__name__)},
                                encode_batch_size=b, latent_codec="f32", store_pixels=False)
        timings.append(time.perf_counter() - start)
        assert report["items"] == len(files), report
    shutil.rmtree(store, ignore_errors=True)
    aitk_out = os.path.join(work, "aitk-latents")
    shutil.rmtree(aitk_out, ignore_errors=True)
    aitk = []
    for fn in (noop, busy):
        shutil.rmtree(aitk_out, ignore_errors=True)
        start = time.perf_counter()
        n = aitk_loop(files, aitk_out, resolution, d, fn)
        aitk.append(time.perf_counter() - start)
    shutil.rmtree(aitk_out, ignore_errors=True)
    return {"images": n, "larder_seconds": timings[0], "larder_batch1_seconds": timings[1],
            "larder_busy_seconds": timings[2], "aitk_seconds": aitk[0], "aitk_busy_seconds": aitk[1]}


class PatchVAE:
    def __init__(self):
        self.w = np.random.default_rng(0).standard_normal((16, 3 * 64)).astype(np.float32) / 8.0
        self.out = {}

    def __call__(self, x):
        n, c, h, w = x.shape
        p = x.reshape(n, c, h // 8, 8, w // 8, 8).transpose(0, 2, 4, 1, 3, 5).reshape(n, h // 8, w // 8, c * 64)
        return np.einsum("nyxk,ok->noyx", p, self.w).astype(np.float32)


def codecs(folder, work, resolution, d):
    files = sorted(f for f in os.listdir(folder) if f.endswith(".jpg"))[:48]
    sub = os.path.join(work, "codec-images")
    shutil.rmtree(sub, ignore_errors=True)
    os.makedirs(sub)
    for f in files:
        os.symlink(os.path.join(os.path.abspath(folder), f), os.path.join(sub, f))
    config = os.path.join(work, "codec.yaml")
    with open(config, "w") as f:
        f.write(f"datasets:\n  - folder_path: {sub}\n    resolution: {resolution}\nlarder:\n  divisibility: {d}\n")
    truth = None
    rows = []
    for codec in ["f32", "bf16", "f16", "fp8_e4m3", "int8", "int8+zstd", "bf16+zstd"]:
        store = os.path.join(work, "codec-store")
        shutil.rmtree(store, ignore_errors=True)
        larder.prepare(config, store, image_encoders={"latent": larder.Encoder(PatchVAE(), "patch16")},
                       latent_codec=codec, store_pixels=False)
        fields = larder.Store.open(store).inspect()["fields"]["latent"]
        got = {}
        for b in larder.DataLoader(store, batch_size=1, shuffle=False, format="numpy"):
            v = b["latent"][0]
            if b["dtypes"]["latent"] == "BF16":
                v = (v.astype(np.uint32) << 16).view(np.float32)
            elif b["dtypes"]["latent"] == "F16":
                v = v.view(np.float16).astype(np.float32)
            got[b["keys"][0]] = v.astype(np.float32)
        if truth is None:
            truth = got
        err = np.concatenate([(got[k] - truth[k]).ravel() for k in truth])
        scale = max(np.abs(truth[k]).max() for k in truth)
        rows.append({"codec": codec, "bytes_per_item": fields["stored_bytes"] / fields["entries"],
                     "max_abs_error": float(np.abs(err).max()), "rms_error": float(np.sqrt((err ** 2).mean())),
                     "max_abs_value": float(scale)})
        shutil.rmtree(store, ignore_errors=True)
    return rows


def text_sizes(work, items=1000):
    rng = np.random.default_rng(0)
    vocab = [f"tag{i}" for i in range(300)]
    folder = os.path.join(work, "captions")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    # Tiny images: the captions are what is measured. A third of the captions repeat, as
    # tagged datasets' do.
    img = Image.new("RGB", (64, 64), (120, 90, 60))
    captions = []
    for i in range(items):
        if i % 3 == 2:
            caption = captions[int(rng.integers(0, len(captions)))]
        else:
            caption = ", ".join(rng.choice(vocab, size=int(rng.integers(6, 16)), replace=False))
        captions.append(caption)
        img.save(os.path.join(folder, f"{i:05d}.png"))
        with open(os.path.join(folder, f"{i:05d}.txt"), "w") as f:
            f.write(caption)

    def clip_l(batch):
        n = len(batch)
        mask = np.zeros((n, 77), np.int64)
        for k, c in enumerate(batch):
            mask[k, : min(77, 2 + len(c.split(",")) * 3)] = 1
        return {"embeds": np.ones((n, 77, 768), np.float16), "pooled": np.ones((n, 768), np.float16), "attention_mask": mask}

    def size(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)

    out = {}
    for name, extra in [("dedup", ""), ("dedup+4 shuffled variants", "    shuffle_tokens: true\n")]:
        config = os.path.join(work, "text.yaml")
        with open(config, "w") as f:
            f.write(f"datasets:\n  - folder_path: {folder}\n    resolution: 64\n{extra}")
        store = os.path.join(work, "text-store")
        shutil.rmtree(store, ignore_errors=True)
        report = larder.prepare(config, store, text_encoders={"text": larder.Encoder(clip_l, "clip-l")},
                                store_pixels=False, caption_variants=4, encode_batch_size=32)
        out[name] = {"bytes": size(os.path.join(store, "shards")) + os.path.getsize(os.path.join(store, "catalog.sqlite")),
                     "captions": report["captions"]}
        shutil.rmtree(store, ignore_errors=True)
    aitk = os.path.join(work, "aitk-te")
    shutil.rmtree(aitk, ignore_errors=True)
    os.makedirs(aitk)
    for i, c in enumerate(captions):
        o = clip_l([c])
        save_file({"text_embed": o["embeds"], "pooled_embed": o["pooled"], "attention_mask": o["attention_mask"]},
                  os.path.join(aitk, f"{i:05d}.safetensors"))
    out["aitk one file per item"] = {"bytes": size(aitk), "captions": items}
    shutil.rmtree(aitk, ignore_errors=True)
    return {"items": items, "distinct": len(set(captions)), "sizes": out}


def main():
    folder, work = sys.argv[1], sys.argv[2]
    resolution, d, batch, runs = (int(a) for a in sys.argv[3:7])
    os.makedirs(work, exist_ok=True)
    result = {"pipeline": pipeline(folder, work, resolution, d, batch, runs)}
    result["codecs"] = codecs(folder, work, resolution, d)
    result["text"] = text_sizes(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
