"""AI Toolkit's SDTrainer with larder's data path.

The trainer is AI Toolkit's own; only where its data comes from changes. Before the first
step the job's datasets are prepared into a larder store, latents encoded by the job's own
loaded model (its ``encode_images``, with its scaling and shift); the trainer then iterates
larder's loaders, whose batches are its own ``DataLoaderBatchDTO``. The loader's position is
saved with every checkpoint and restored on resume, so a resumed run continues the exact data
order.
"""

import copy
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .batches import BatchMaker, Loader, PromptLayout, dataset_views
from .clip_vision import FIELD as CLIP_FIELD
from .clip_vision import ClipVision

log = logging.getLogger("larder.aitk")

# Dataset keys whose values are paths; AI Toolkit resolves relative ones against the current
# folder, and larder's config file is written elsewhere, so they are made absolute first.
PATH_KEYS = re.compile(r"^(folder_path|dataset_path|mask_path|control_path(_\d+)?|inpaint_path|unconditional_path|clip_image_path)$")

# Keys larder warns it does not serve that the drop-in serves itself: AI Toolkit's trainer reads
# `prior_reg` from the file items' dataset config, which the batches carry, and makes the
# differential output preservation prompts from the captions (or, with cached text embeddings,
# takes the `dop` embeddings the drop-in stores).
SERVED_HERE = ("prior_reg", "diff_output_preservation", "diff_output_preservation_class")


def trainer_class() -> Any:
    """The trainer class (made on demand: it subclasses AI Toolkit's, importable only once AI
    Toolkit is on the path)."""
    from extensions_built_in.sd_trainer.SDTrainer import SDTrainer  # type: ignore[import-not-found]

    class LarderSDTrainer(SDTrainer):
        """AI Toolkit's SDTrainer, served by larder (process type ``larder_sd_trainer``)."""

        def __init__(self, process_id: int, job: Any, config: Dict[str, Any], **kwargs: Any):
            super().__init__(process_id, job, config, **kwargs)
            # Checked now, before the model is loaded: a job larder cannot serve stops at once.
            self.larder = DataPath(self)

        def hook_after_sd_init_before_load(self) -> None:
            super().hook_after_sd_init_before_load()
            # The model object exists, its weights are not loaded yet.
            self.larder.check_model(self.sd)

        def before_dataset_load(self) -> None:
            super().before_dataset_load()
            self.larder.hide_datasets()

        def hook_before_train_loop(self) -> None:
            # Encoding needs the VAE, which AI Toolkit offloads in the hook once latents are
            # cached: the store is prepared first.
            self.data_loader, self.data_loader_reg = self.larder.open()
            super().hook_before_train_loop()

        def save(self, step: Optional[int] = None) -> None:
            super().save(step)
            self.larder.save_position()

    return LarderSDTrainer


class DataPath:
    """The job's datasets as larder stores and loaders, for one trainer process."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        section = dict(trainer.job.raw_config.get("larder") or {})
        self.work = Path(trainer.save_root) / ".larder"
        self.store = str(section.pop("store", None) or self.work / "store")
        self.seed = int(section.get("seed", 0))
        self.batch_size = int(trainer.train_config.batch_size)
        raw = [self._as_aitk_reads(d) for d in copy.deepcopy(trainer.get_conf("datasets", None) or [])]
        self.groups: Dict[str, List[Tuple[int, Dict[str, Any]]]] = {}
        for index, dataset in enumerate(raw):
            group = "reg" if dataset.get("is_reg") else "train"
            self.groups.setdefault(group, []).append((index, dataset))
        self.work.mkdir(parents=True, exist_ok=True)
        self.section = section
        self.configs = self._write_configs()
        problems = []
        for group, datasets in self.groups.items():
            problems += self._unserved(self.configs[group], datasets)
            problems += self._clip_image_mix(datasets)
        self.dop = {group: self._dop_words(datasets, problems) for group, datasets in self.groups.items()}
        if problems:
            raise _cannot_serve(problems, "Remove these keys, or train this job with AI Toolkit's own `sd_trainer`.")
        self.loaders: Dict[str, Loader] = {}
        self._hidden: Tuple[Any, Any] = (None, None)

    def _write_configs(self) -> Dict[str, Any]:
        """Writes each group's datasets, with the job's model and ``larder:`` section, as a
        larder config file in the work folder, and loads it."""
        from .. import load_config

        configs = {}
        for group, datasets in self.groups.items():
            path = self.work / f"{group}.yaml"
            document = {"model": dict(self.trainer.get_conf("model", None) or {}), "datasets": [d for _, d in datasets]}
            if self.section:
                document["larder"] = self.section
            # JSON is YAML: the file is written without a YAML library.
            path.write_text(json.dumps(document, indent=2))
            configs[group] = load_config(path)
        return configs

    def _as_aitk_reads(self, dataset: Dict[str, Any]) -> Dict[str, Any]:
        """The dataset as AI Toolkit's trainer configures it: the train section's switches copied
        onto it, the process's trigger word as its default, paths absolute."""
        train = self.trainer.train_config
        if train.cache_text_embeddings:
            dataset["cache_text_embeddings"] = True
        if getattr(train, "diff_output_preservation", False):
            dataset["diff_output_preservation"] = True
            dataset["diff_output_preservation_class"] = train.diff_output_preservation_class
        if dataset.get("trigger_word") is None and self.trainer.trigger_word is not None:
            dataset["trigger_word"] = self.trainer.trigger_word
        for key, value in dataset.items():
            if PATH_KEYS.match(key):
                dataset[key] = _absolute(value)
        return dataset

    def _key(self, index: Optional[int], name: str = "") -> str:
        """A key of the job's dataset ``index``, as the job file names it."""
        return f"config.process[{self.trainer.process_id}].datasets[{index}]" + (f".{name}" if name else "")

    def _unserved(self, config: Any, datasets: List[Tuple[int, Dict[str, Any]]]) -> List[str]:
        """What the group's datasets ask for that larder cannot serve, named as in the job."""
        problems = []

        for key, why in config.not_served:
            # Keys of this file's datasets: `datasets[i].name`, i indexing this group.
            match = re.match(r"^datasets\[(\d+)\]\.(.+)$", key)
            index, dataset = datasets[int(match.group(1))] if match else (None, {})
            name = match.group(2) if match else key
            if name in SERVED_HERE:
                continue
            at = self._key(index, name) if match else key
            problems.append(f"{at}: {why.replace('; ignored', '')}")
        return problems

    def check_model(self, sd: Any) -> None:
        """Takes from the model, before its weights load, how it wants its datasets' control
        images: a model that takes them at their own size (``use_raw_control_images``) gets
        them so, whatever its architecture name; the configs are written again with
        ``larder.raw_control_images`` as the model says."""
        raw = bool(getattr(sd, "use_raw_control_images", False))
        if self.section.get("raw_control_images") != raw:
            self.section["raw_control_images"] = raw
            self.configs = self._write_configs()
        if getattr(sd, "encode_first_frame_in_text_embeddings", False):
            # Such a model's cached text embedding of a clip also sees its first frame; larder
            # encodes captions from their text (and control images) only.
            at = [
                self._key(i, "do_i2v")
                for datasets in self.groups.values()
                for i, d in datasets
                if d.get("do_i2v") and d.get("cache_text_embeddings") and _is_video(d)
            ]
            if at:
                raise _cannot_serve(
                    [f"{key}: this model encodes a clip's first frame into its cached text embeddings, which larder does not do yet" for key in at],
                    "Set cache_text_embeddings: false, or train this job with AI Toolkit's own `sd_trainer`.",
                )

    def _use_model_frame_rule(self, sd: Any) -> None:
        """Writes the configs again when the loaded model's temporal compression (what
        ``auto_frame_count`` snaps to) is not the one larder's architecture table gave."""
        if not any(_is_video(d) for datasets in self.groups.values() for _, d in datasets):
            return
        compression = _temporal_compression(sd)
        if self.section.get("temporal_compression") != compression:
            self.section["temporal_compression"] = compression
            self.configs = self._write_configs()

    def hide_datasets(self) -> None:
        """Keeps AI Toolkit from building its own loaders (it builds them when these are set)."""
        t = self.trainer
        self._hidden = (t.datasets, t.datasets_reg)
        t.datasets, t.datasets_reg = None, None

    def open(self) -> Tuple[Optional[Loader], Optional[Loader]]:
        """Prepares each group's store and opens its loader; restores the position on resume."""
        import larder

        t = self.trainer
        t.datasets, t.datasets_reg = self._hidden
        self._share_the_resumed_step()
        self._use_model_frame_rule(t.sd)
        model = _file_item_model_args(t.sd)
        layout = self._prompt_layout(model)
        for group, config in self.configs.items():
            location = _join(self.store, group)
            raw = [d for _, d in self.groups[group]]
            caches_latents = all(d.get("cache_latents") or d.get("cache_latents_to_disk") for d in raw)
            prompts = layout if any(d.get("cache_text_embeddings") for d in raw) else None
            clip = self._clip_vision(group, raw)
            # One process prepares (and encodes); under torchrun or accelerate the other ranks
            # wait for it, then open the finished store.
            if t.accelerator.is_main_process:
                encoders = {"latent": latent_encoder(t)} if caches_latents else None
                texts = None
                if prompts:
                    texts = {PromptLayout.FIELD: text_encoder(t, prompts)}
                    if self.dop[group]:
                        texts[PromptLayout.DOP_FIELD] = text_encoder(t, prompts, self.dop[group])
                if texts:
                    # AI Toolkit's own caching has the text encoder on the device for this.
                    t.sd.text_encoder_to(t.device_torch)
                clips = None
                if clip and clip.cached:
                    clips = {CLIP_FIELD: clip.encoder()}
                    clip.write_unconditionals()
                report = larder.prepare(
                    config,
                    location,
                    image_encoders=encoders,
                    text_encoders=texts,
                    clip_encoders=clips,
                    # One image or caption per call, as AI Toolkit encodes them: the padding
                    # of a caption's embedding then never depends on the others in its batch.
                    encode_batch_size=1,
                    latent_codec=_codec(t.sd.vae_torch_dtype),
                    text_codec=_codec(t.sd.torch_dtype),
                    store_pixels=not caches_latents,
                    progress=True,
                )
                log.info(
                    "larder: %s store %s: %d items, %d entries computed, %d reused",
                    group, location, report["items"], report["entries_computed"], report["entries_reused"],
                )
            t.accelerator.wait_for_everyone()
            store = larder.Store.open(location)
            native = larder.DataLoader(
                store,
                batch_size=self.batch_size,
                shuffle=True,
                seed=self.seed,
                rank=t.accelerator.process_index,
                world_size=t.accelerator.num_processes,
                format="torch",
            )
            aitk = self._hidden[0] if group == "train" else self._hidden[1]
            views = dataset_views(raw, aitk)
            batches = BatchMaker(store.items(), views, model, prompts, clip)
            self.loaders[group] = Loader(native, batches, group, t.accelerator.process_index)
            if clip and clip.cached:
                # Where AI Toolkit's dataset lists them: its trainer collects them from the
                # training loader's datasets when the job has a regularisation dataset.
                self.loaders[group].dataset.clip_vision_unconditional_cache = clip.read_unconditionals()
        train, reg = self.loaders.get("train"), self.loaders.get("reg")
        if train is not None and reg is not None and train.dataset.clip_vision_unconditional_cache:
            # AI Toolkit's trainer gives a regularisation step of an adapter with cached CLIP
            # embeddings unconditional ones, loading each of the batch's
            # `clip_image_embeds_unconditional` as a file (`load_file(random.choice(...))`);
            # its own batches hold loaded embeddings there, or none, and the step fails.
            # Regularisation batches name the training datasets' files there instead.
            reg.make_batch.unconditional_files = list(train.dataset.clip_vision_unconditional_cache)
        self._restore_position()
        return train, reg

    def _clip_image_mix(self, datasets: List[Tuple[int, Dict[str, Any]]]) -> List[str]:
        """What larder cannot serve in how a group's datasets give CLIP images: some with
        ``clip_image_path`` and some without, or some caching their embeddings and some not."""
        with_clip = [(i, d) for i, d in datasets if d.get("clip_image_path")]
        cached = {bool(d.get("cache_clip_vision_to_disk")) for _, d in with_clip}
        if not with_clip or (len(with_clip) == len(datasets) and len(cached) == 1):
            return []
        at = ", ".join(self._key(i, "clip_image_path") for i, _ in with_clip)
        return [f"{at}: datasets with and without clip_image_path, or with and without cache_clip_vision_to_disk, in one group (training or regularisation) are not served by larder yet; give them the same"]

    def _clip_vision(self, group: str, raw: List[Dict[str, Any]]) -> Optional[ClipVision]:
        """The group's CLIP vision inputs, when its datasets have ``clip_image_path``; stops
        the run when the job's adapter takes images larder cannot give it."""
        if not any(d.get("clip_image_path") for d in raw):
            return None
        adapter = getattr(self.trainer.sd, "adapter", None)
        cached = bool(raw[0].get("cache_clip_vision_to_disk"))
        problems = ClipVision.problems(adapter, cached)
        if problems:
            at = ", ".join(self._key(i, "clip_image_path") for i, _ in self.groups[group])
            raise _cannot_serve([f"{at}: {p}" for p in problems], "Train this job with AI Toolkit's own `sd_trainer`.")
        return ClipVision(self.trainer, cached, self.seed, self.work / "clip_unconditional" / group)

    def _dop_words(self, datasets: List[Tuple[int, Dict[str, Any]]], problems: List[str]) -> Optional[Tuple[str, str]]:
        """The (trigger word, class word) of differential output preservation when the group's
        datasets cache text embeddings with it; None otherwise.

        AI Toolkit caches, per item, the caption with its dataset's trigger word replaced by the
        class (and the same of the dropout caption); larder stores them as the text field
        ``dop``, encoded from the same captions with the replacement made, which needs one
        trigger word for the group (a dataset without one keeps its captions, as in AI
        Toolkit, unless they contain that word). Two trigger words are added to ``problems``.
        """
        dop = [(i, d) for i, d in datasets if d.get("cache_text_embeddings") and d.get("diff_output_preservation")]
        triggers = sorted({d["trigger_word"] for _, d in dop if d.get("trigger_word")})
        if len(triggers) > 1:
            at = ", ".join(self._key(i) for i, _ in dop)
            problems.append(
                f"{at}: differential output preservation with cached text embeddings for datasets with different trigger words ({', '.join(triggers)}) is not served by larder yet; give them one trigger word"
            )
            return None
        return (triggers[0], dop[0][1]["diff_output_preservation_class"]) if triggers else None

    def _prompt_layout(self, model: Dict[str, Any]) -> Optional[PromptLayout]:
        """How the model's prompt embeddings are stored, when a dataset caches them."""
        import torch

        raw = [d for datasets in self.groups.values() for _, d in datasets]
        if not any(d.get("cache_text_embeddings") for d in raw):
            return None
        with torch.no_grad():
            return PromptLayout(self.trainer.sd.encode_prompt(""))

    def _share_the_resumed_step(self) -> None:
        """Gives every rank the step and epoch the main process resumes at.

        AI Toolkit reads them from the checkpoint on the main process only
        (``load_training_state_from_metadata``), while every rank loads the weights: the other
        ranks would start again at step 0, train more steps than the main process, and serve
        the data order from its start.
        """
        t = self.trainer
        if t.accelerator.num_processes == 1:
            return
        from accelerate.utils import broadcast_object_list

        resumed = broadcast_object_list([t.step_num, t.start_step, t.epoch_num], from_process=0)
        t.step_num, t.start_step, t.epoch_num = resumed

    def _position_file(self, step: int) -> Path:
        return self.work / "positions" / f"step-{step:09d}.json"

    def save_position(self) -> None:
        """Saves each loader's position beside the checkpoint AI Toolkit just wrote (keyed by
        the step it records in it), keeping as many as AI Toolkit keeps checkpoints.

        The position is the global one (how many batches all ranks together have served), the
        same on every rank, so the main process writes it, as AI Toolkit writes its checkpoint.
        """
        if not self.trainer.accelerator.is_main_process:
            return
        step = int(self.trainer.step_num)
        path = self._position_file(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {group: loader.native.state_dict() for group, loader in self.loaders.items()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
        keep = int(getattr(self.trainer.save_config, "max_step_saves_to_keep", 0) or 0) + 1
        saved = sorted(path.parent.glob("step-*.json"))
        for old in saved[:-keep]:
            old.unlink()

    def _restore_position(self) -> None:
        """On resume (AI Toolkit restored a step from its checkpoint), continues each loader
        where it was at that checkpoint."""
        from .. import ArgumentError

        step = int(self.trainer.step_num)
        if step == 0:
            return
        path = self._position_file(step)
        epoch = int(self.trainer.epoch_num)

        def start_epoch_again(why: str) -> None:
            log.warning("larder: resuming at step %d without larder's position for it (%s); the data order starts again at epoch %d", step, why, epoch)
            for loader in self.loaders.values():
                loader.native.set_epoch(epoch)

        if not path.is_file():
            start_epoch_again(f"{path} is missing: the checkpoint was not written by larder_sd_trainer")
            return
        state = json.loads(path.read_text())
        try:
            for group, loader in self.loaders.items():
                if group in state:
                    loader.native.load_state_dict(state[group])
        except ArgumentError as e:
            start_epoch_again(f"{path}: {e}")
            return
        log.info("larder: resumed the data order at step %d from %s", step, path)


def latent_encoder(trainer: Any) -> Any:
    """The job's own VAE as a larder image encoder: AI Toolkit's ``encode_images`` (which
    samples the latent distribution and applies the VAE's scaling and shift), under an identity
    naming the model, so another model re-encodes everything and the same one nothing."""
    import torch

    import larder

    sd = trainer.sd
    vae_config = dict(sd.vae.config)

    def encode(pixels: Any) -> Any:
        with torch.no_grad():
            images = torch.from_numpy(pixels)
            return sd.encode_images(list(images))

    identity = _identity(
        trainer,
        "encode_images",
        vae=getattr(trainer.model_config, "vae_path", None),
        dtype=sd.vae_torch_dtype,
        vae_config=json.dumps(vae_config, sort_keys=True, default=str),
    )
    return larder.Encoder(
        encode,
        identity,
        scaling_factor=vae_config.get("scaling_factor"),
        shift_factor=vae_config.get("shift_factor"),
    )


def text_encoder(trainer: Any, layout: PromptLayout, dop: Optional[Tuple[str, str]] = None) -> Any:
    """The job's own text encoders as a larder text encoder: AI Toolkit's ``encode_prompt``,
    one caption at a time as its caching does, under an identity naming the model.

    With ``dop`` (trigger word, class word), each caption is encoded with the trigger word
    replaced by the class: AI Toolkit's differential output preservation captions.

    A model that encodes its control images into the text embeddings
    (``encode_control_in_text_embeddings``: Qwen-Image-Edit, ...) is given each caption's
    control images as AI Toolkit's caching gives them (:func:`_control_images`); larder keys
    the embedding by caption and controls. Captions without controls (the empty and dropout
    captions, items without control images) are encoded from their text alone, as AI
    Toolkit encodes its dropout embeddings.
    """
    import torch

    import larder

    sd = trainer.sd
    controls = bool(getattr(sd, "encode_control_in_text_embeddings", False))

    def prompt(caption: str) -> str:
        return caption.replace(dop[0], dop[1]) if dop else caption

    def one(caption: str, files: List[str]) -> Dict[str, Any]:
        if files:
            return layout.arrays(sd.encode_prompt(prompt(caption), control_images=_control_images(sd, files)))
        return layout.arrays(sd.encode_prompt(prompt(caption)))

    def encode(captions: Any, files: Optional[List[List[str]]] = None) -> Any:
        with torch.no_grad():
            parts = [one(caption, files[k] if files else []) for k, caption in enumerate(captions)]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    identity = _identity(
        trainer,
        "encode_prompt",
        dtype=sd.torch_dtype,
        space=getattr(sd, "text_embedding_space_version", None),
        outputs=sorted(layout.dtypes),
        **({"replace": json.dumps(list(dop))} if dop else {}),
        **({"controls": True} if controls else {}),
    )
    return larder.Encoder(encode, identity, controls=controls)


def _control_images(sd: Any, files: List[str]) -> Any:
    """An item's control images as AI Toolkit's text-embedding caching gives them to
    ``encode_prompt``: each opened, converted to RGB (transparency dropped, not composited),
    EXIF-transposed, as a [1, 3, H, W] tensor in [0, 1] on the model's device and dtype; the
    list when the model takes several (``has_multiple_control_images``), else the first."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from PIL.ImageOps import exif_transpose

    images = []
    for path in files:
        with Image.open(path) as img:
            rgb = exif_transpose(img.convert("RGB"))
        images.append(TF.to_tensor(rgb).unsqueeze(0).to(sd.device_torch, dtype=sd.torch_dtype))
    return images if getattr(sd, "has_multiple_control_images", False) else images[0]


def _identity(trainer: Any, function: str, **settings: Any) -> str:
    """An encoder identity: the AI Toolkit function, the job's model and architecture, and
    the settings that change the function's output."""
    model = trainer.model_config
    parts = [f"ai-toolkit {function}", f"model={model.name_or_path}", f"arch={getattr(model, 'arch', None)}"]
    return " ".join(parts + [f"{key}={value}" for key, value in settings.items()])


def _file_item_model_args(sd: Any) -> Dict[str, Any]:
    """What AI Toolkit's loader gives each FileItemDTO from the model."""
    return {
        "sd": sd,
        "encode_control_in_text_embeddings": getattr(sd, "encode_control_in_text_embeddings", False),
        "encode_first_frame_in_text_embeddings": getattr(sd, "encode_first_frame_in_text_embeddings", False),
        "text_embedding_space_version": getattr(sd, "text_embedding_space_version", "sd1"),
        "te_padding_side": getattr(sd, "te_padding_side", "right"),
        "temporal_compression": _temporal_compression(sd),
    }


def _temporal_compression(sd: Any) -> int:
    """Frames per latent frame of the loaded model, as AI Toolkit's loader reads it (its VAE's
    ``scale_factor_temporal``, else its transformer's ``temporal_compression_ratio``, else 8)."""
    compression = 8
    vae = getattr(getattr(sd, "vae", None), "config", None)
    if vae is not None and hasattr(vae, "scale_factor_temporal"):
        compression = vae.scale_factor_temporal
    unet = getattr(getattr(sd, "unet", None), "config", None)
    if unet is not None and hasattr(unet, "temporal_compression_ratio"):
        compression = unet.temporal_compression_ratio
    return int(compression)


def _is_video(dataset: Dict[str, Any]) -> bool:
    """Whether a dataset as written is a video dataset (AI Toolkit's test)."""
    return bool(dataset.get("auto_frame_count")) or int(dataset.get("num_frames") or 1) > 1


def _cannot_serve(problems: List[str], advice: str) -> Exception:
    """The error that stops a job larder cannot serve: each problem on a line, then ``advice``."""
    from .. import ConfigError

    return ConfigError("larder cannot serve what this job asks for yet:\n  " + "\n  ".join(problems) + "\n" + advice)


def _codec(dtype: Any) -> str:
    """The store codec that keeps latents in the dtype AI Toolkit caches them in (the VAE's)."""
    import torch

    return {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype, "f32")


def _absolute(value: Any) -> Any:
    if isinstance(value, str) and value and "://" not in value:
        return os.path.abspath(value)
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    return value


def _join(store: str, group: str) -> str:
    return f"{store.rstrip('/')}/{group}" if "://" in store else os.path.join(store, group)
