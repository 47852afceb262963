"""AI Toolkit's CLIP vision inputs (``clip_image_path``) served from larder's store.

An image adapter (IP-Adapter and its kin) trains on each item's image of the same stem in the
dataset's ``clip_image_path`` folder. larder squares that image as AI Toolkit's
``load_clip_image`` does; the rest is the adapter's own, run here as AI Toolkit runs it:

- without ``cache_clip_vision_to_disk``, the batch's ``clip_image_tensor`` is the adapter's
  image processor applied to the squared image (stored as ``clip_image``), per step;
- with it, larder's store keeps the adapter's vision-model output (the layer the adapter reads,
  ``clip_layer``), computed once, content-addressed, by the job's own processor and vision
  model; the batch's ``clip_image_embeds`` carry it, and ``clip_image_embeds_unconditional``
  one of the embeddings of blank or noise images AI Toolkit caches beside them.
"""

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, List

#: The store field of an item's cached CLIP vision embedding.
FIELD = "clip"
#: The store field of an item's squared CLIP image (no cached embeddings).
IMAGE_FIELD = "clip_image"

# AI Toolkit caches this many unconditional embeddings of noise images when its adapter draws
# noise for a dropped CLIP image (`clip_noise_zero`), else one of a black image.
NOISE_UNCONDITIONALS = 20

log = logging.getLogger("larder.aitk")


class ClipVision:
    """The job's image adapter's processor and vision model, as AI Toolkit's loader uses them.

    Args:
        trainer: AI Toolkit's trainer, with its adapter set up.
        cached: Whether the group's datasets cache their CLIP vision embeddings.
        seed: Seeds the noise images of the unconditional embeddings and which one an item gets.
        work: The folder the unconditional embeddings are written to (AI Toolkit's trainer reads
            them from files).
    """

    def __init__(self, trainer: Any, cached: bool, seed: int, work: Path):
        adapter = trainer.sd.adapter
        self.sd = trainer.sd
        self.trainer = trainer
        self.cached = cached
        self.processor = adapter.clip_image_processor
        self.vision = getattr(adapter, "vision_encoder", None) or getattr(adapter, "image_encoder", None)
        self.config = adapter.config
        self.layer = self.config.clip_layer
        self.noise = bool(getattr(adapter, "clip_noise_zero", False))
        self.input_size = int(adapter.input_size)
        self.seed = seed
        self.work = work
        self._rng = random.Random(seed)
        self._unconditional: List[Dict[str, Any]] = []

    @staticmethod
    def problems(adapter: Any, cached: bool) -> List[str]:
        """Why the job's adapter cannot be served CLIP images by larder; empty when it can."""
        if cached and getattr(getattr(adapter, "config", None), "quad_image", False):
            return ["cached CLIP vision embeddings of an adapter with quad_image (AI Toolkit encodes the four cells of each image) are not served by larder yet; set cache_clip_vision_to_disk: false"]
        processor = getattr(adapter, "clip_image_processor", None)
        if adapter is None or processor is None:
            return ["clip_image_path needs an image adapter with an image processor (AI Toolkit then gives the raw image, unsquared, which larder does not serve yet)"]
        # SigLIP and Pixtral processors take images of any size and shape: AI Toolkit does not
        # square their images; larder squares every CLIP image.
        kind = type(processor).__name__
        if "Siglip" in kind or "Pixtral" in kind:
            return [f"clip_image_path with the adapter's {kind}, which takes unsquared images: larder squares CLIP images, so this is not served yet"]
        return []

    def _processed(self, pixels: Any) -> Any:
        """The processor's output for one squared image (C, H, W) uint8, as ``load_clip_image``
        makes it: [0, 1] (ToTensor), in float16, resized by the processor, not rescaled."""
        import torch

        tensors_0_1 = (pixels.float() / 255.0).to(dtype=torch.float16)
        out = self.processor(images=tensors_0_1, return_tensors="pt", do_resize=True, do_rescale=False).pixel_values
        return out.squeeze(0).clone().detach()

    def _outputs(self, clip_image: Any) -> Dict[str, Any]:
        """The vision model's three outputs AI Toolkit caches, for a processed batch."""
        clip_image = clip_image.to(self.sd.device_torch, dtype=self.sd.torch_dtype)
        out = self.vision(clip_image, output_hidden_states=True)
        return {
            "image_embeds": out.image_embeds.detach().cpu(),
            "last_hidden_state": out.hidden_states[-1].detach().cpu(),
            "penultimate_hidden_states": out.hidden_states[-2].detach().cpu(),
        }

    def identity(self) -> str:
        """What the cached embeddings depend on: the adapter's vision model and processor, the
        layer it reads and the dtype it runs in. A change of any re-encodes them."""
        processor = json.dumps(self.processor.to_dict(), sort_keys=True, default=str)
        return " ".join([
            "ai-toolkit clip vision",
            f"image_encoder={self.config.image_encoder_path}",
            f"arch={self.config.image_encoder_arch}",
            f"layer={self.layer}",
            f"dtype={self.sd.torch_dtype}",
            f"model={self.trainer.model_config.name_or_path}",
            f"processor={hashlib.sha256(processor.encode()).hexdigest()[:16]}",
        ])

    def encoder(self) -> Any:
        """A larder CLIP encoder (one squared image per call, uint8) storing the layer the
        adapter reads, shaped as AI Toolkit caches it ([1, ...] per item)."""
        import torch

        import larder

        def encode(pixels: Any) -> Any:
            with torch.no_grad():
                processed = self._processed(torch.from_numpy(pixels[0]))
                return self._outputs(processed.unsqueeze(0))[self.layer].unsqueeze(0)

        self.vision.to(self.sd.device)
        return larder.Encoder(encode, self.identity(), pixels="uint8")

    def _unconditional_files(self) -> List[Path]:
        # Named by what they depend on, as the store keys its entries: a rerun finds them, a
        # changed model or seed does not.
        count = NOISE_UNCONDITIONALS if self.noise else 1
        key = json.dumps([self.identity(), self.noise, self.seed, self.input_size])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return [self.work / f"uncond_{digest}_{i}.safetensors" for i in range(count)]

    def write_unconditionals(self) -> None:
        """Encodes and writes the unconditional embeddings AI Toolkit caches with its CLIP
        vision cache: of ``NOISE_UNCONDITIONALS`` noise images (seeded here) when the adapter
        draws noise for a dropped image, else of one black image. Those already written for
        the same model and seed are kept, others in the folder removed. One process writes
        them; every rank reads them (:meth:`read_unconditionals`)."""
        import torch
        from safetensors.torch import save_file

        files = self._unconditional_files()
        self.work.mkdir(parents=True, exist_ok=True)
        for stale in set(self.work.glob("uncond_*")) - set(files):
            stale.unlink()
        if all(path.is_file() for path in files):
            log.info("larder: %d unconditional CLIP vision embeddings reused", len(files))
            return
        # Every file is drawn from one generator in order, so all are written again together.
        generator = torch.Generator().manual_seed(self.seed)
        shape = (1, 3, self.input_size, self.input_size)
        with torch.no_grad():
            for path in files:
                images = torch.rand(shape, generator=generator) if self.noise else torch.zeros(shape)
                processed = self.processor(images=images, return_tensors="pt", do_resize=True, do_rescale=False).pixel_values
                # Written whole or not at all: a stopped run leaves no file a rerun would reuse.
                partial = path.with_suffix(".partial")
                save_file(self._outputs(processed), str(partial))
                os.replace(partial, path)
        log.info("larder: %d unconditional CLIP vision embeddings computed", len(files))

    def read_unconditionals(self) -> List[str]:
        """Reads the unconditional embeddings; returns their files, which AI Toolkit's trainer
        reads itself for regularisation batches."""
        from safetensors.torch import load_file

        paths = [str(p) for p in self._unconditional_files()]
        self._unconditional = [load_file(p) for p in paths]
        return paths

    def fill(self, file_item: Any, batch: Dict[str, Any], k: int, fields: Dict[str, str]) -> None:
        """Sets item ``k``'s CLIP inputs on its FileItemDTO, as AI Toolkit's loader does;
        ``fields`` are the item's stored fields."""
        if FIELD in batch:
            file_item.clip_image_embeds = {self.layer: batch[FIELD][k]}
            file_item.is_vision_clip_cached = True
            if self._unconditional:
                file_item.clip_image_embeds_unconditional = self._rng.choice(self._unconditional)
        elif IMAGE_FIELD in fields:
            file_item.clip_image_tensor = self._processed(batch[IMAGE_FIELD][k])
        # An item without a CLIP image keeps None: AI Toolkit's batch gives it zeros shaped as
        # its batch mates' processed images (the engine serves it a black image, which the
        # processor would normalise to something else).
