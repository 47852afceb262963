"""larder's batches as AI Toolkit's: DataLoaderBatchDTO built by its own constructor from file
items that carry what its trainer and models read."""

import copy
import json
import os
from typing import Any, Dict, List, Optional, Sequence

#: Where larder keeps an item's control images: `control.0`, `control.1`, ... at the item's
#: bucket (or 512x512), stacked in a batch; `control_raw.0`, ... at their own size (models with
#: `use_raw_control_images`), one tensor per item.
CONTROL_PREFIX = "control."
RAW_CONTROL_PREFIX = "control_raw."
#: A clip's first frame encoded alone (``do_i2v``): AI Toolkit's ``first_frame_latent``.
FIRST_FRAME_LATENT = "latent.first_frame"


class BatchMaker:
    """Turns a larder batch (``format="torch"``) into AI Toolkit's ``DataLoaderBatchDTO``.

    Args:
        items: The store's items (``larder.Store.items()``), by id.
        datasets: AI Toolkit's ``DatasetConfig`` for each of the store's datasets, by index:
            what ``file_item.dataset_config`` shows the trainer.
        model: What AI Toolkit's own loader gives each file item from the model
            (``sd``, ``te_padding_side``, ``text_embedding_space_version``, ...).
        prompts: How stored text embeddings become the model's ``PromptEmbeds``, when the store
            has them.
        clip: The adapter's CLIP vision inputs, when the datasets have ``clip_image_path``.
    """

    def __init__(
        self,
        items: Sequence[Dict[str, Any]],
        datasets: Sequence[Any],
        model: Dict[str, Any],
        prompts: Optional["PromptLayout"] = None,
        clip: Optional[Any] = None,
    ):
        from toolkit.data_transfer_object.data_loader import (  # type: ignore[import-not-found]
            DataLoaderBatchDTO,
            FileItemDTO,
        )

        self._batch_class = DataLoaderBatchDTO
        self._file_item_class = FileItemDTO
        self._items = {item["id"]: item for item in items}
        self._datasets = list(datasets)
        self._model = dict(model)
        self._prompts = prompts
        self._clip = clip
        # Files of unconditional CLIP vision embeddings a regularisation batch names for AI
        # Toolkit's trainer to load (set by the data path; see `DataPath.open`).
        self.unconditional_files: List[str] = []
        # Each item's FileItemDTO as its constructor leaves it, made on first use: the
        # constructor probes the file system (the image's signature, control and mask files),
        # which AI Toolkit does once per item, not once per step.
        self._made: Dict[int, Any] = {}

    def __call__(self, batch: Dict[str, Any]) -> Any:
        # A shallow copy per batch slot: the tensors set below belong to this batch (an item
        # can fill two slots of a topped-up batch), the rest is shared with the made item.
        ids = [int(i) for i in batch["items"].tolist()]
        file_items = [copy.copy(self._file_item(i)) for i in ids]
        controls = sorted(k for k in batch if k.startswith(CONTROL_PREFIX))
        raw_controls = sorted(k for k in batch if k.startswith(RAW_CONTROL_PREFIX))
        if len(raw_controls) == 1:
            _check_stackable(batch[raw_controls[0]], [f.path for f in file_items])
        for k, file_item in enumerate(file_items):
            caption = batch["captions"][k]
            file_item.caption = caption
            file_item.caption_short = caption
            if "pixels" in batch:
                # AI Toolkit's images are float in [-1, 1] (ToTensor, then Normalize(0.5, 0.5));
                # a clip's frames (F, 3, H, W) the same.
                file_item.tensor = batch["pixels"][k].float() / 127.5 - 1.0
            if "latent" in batch:
                file_item.is_latent_cached = True
                file_item._encoded_latent = batch["latent"][k]
            if FIRST_FRAME_LATENT in batch:
                file_item._cached_first_frame_latent = batch[FIRST_FRAME_LATENT][k]
            if "audio" in batch:
                # A clip's stereo waveform (do_audio) at its track's rate, as AI Toolkit's
                # load_and_process_video leaves it; rate 0 marks a clip without a track, which
                # AI Toolkit's batch fills with silence.
                rate = int(batch["audio.sample_rate"][k])
                if rate > 0:
                    file_item.audio_data = {"waveform": batch["audio"][k], "sample_rate": rate}
                    file_item.audio_tensor = batch["audio"][k]
            if "mask" in batch:
                # Stored with invert_mask and mask_min_value applied, as 0..255.
                file_item.mask_tensor = batch["mask"][k].float() / 255.0
            if controls:
                tensors = [batch[name][k].float() / 255.0 for name in controls]
                if len(tensors) == 1:
                    file_item.control_tensor = tensors[0]
                else:
                    import torch

                    file_item.control_tensor = torch.stack(tensors)
            if raw_controls:
                # AI Toolkit's load_control_image: one control is the item's control_tensor
                # (stacked by the batch), several its control_tensor_list.
                tensors = [batch[name][k].float() / 255.0 for name in raw_controls]
                if len(tensors) == 1:
                    file_item.control_tensor = tensors[0]
                else:
                    file_item.control_tensor_list = tensors
            if "inpaint" in batch:
                file_item.inpaint_tensor = batch["inpaint"][k].float() / 255.0
            if self._clip is not None:
                self._clip.fill(file_item, batch, k, self._items[ids[k]]["fields"])
            if self._prompts is not None:
                file_item.prompt_embeds = self._prompts.embeds(batch, k)
                if f"{PromptLayout.DOP_FIELD}.embeds" in batch:
                    file_item.dop_prompt_embeds = self._prompts.embeds(batch, k, PromptLayout.DOP_FIELD)
        made = self._batch_class(file_items=file_items)
        if self.unconditional_files:
            made.clip_image_embeds_unconditional = list(self.unconditional_files)
        return made

    def _file_item(self, item_id: int) -> Any:
        """The stored item's FileItemDTO, made by AI Toolkit's constructor once.

        Its size comes from larder's scan through the size database AI Toolkit's constructor
        consults, so no image is opened here; the file's signature (size and mtime) is the one
        AI Toolkit computes, so an entry is accepted exactly when AI Toolkit would accept it.
        """
        if item_id in self._made:
            return self._made[item_id]
        from toolkit.basic import get_quick_signature_string  # type: ignore[import-not-found]

        item = self._items[item_id]
        path = item["path"]
        entry = (item["width"], item["height"], get_quick_signature_string(path))
        frames = item.get("frames")
        dataset = self._datasets[item["dataset"]]
        if frames is not None:
            # A clip's entry also has its frame count and rate, from which the constructor
            # counts `auto_frame_count` frames. larder records the frames it chose, not the
            # file's count: the clip is given as those frames at the dataset's rate, so the
            # constructor's count is the stored one (snapped already), and it is set below.
            entry += (len(frames), dataset.fps)
        sizes = {os.path.basename(path): entry}
        flip = item["flip"]
        file_item = self._file_item_class(
            path=path,
            dataset_config=dataset,
            size_database=sizes,
            raw_caption=item["caption"],
            scale_to_width=item["scale_to_w"],
            scale_to_height=item["scale_to_h"],
            crop_x=item["crop_x"],
            crop_y=item["crop_y"],
            crop_width=item["bucket_w"],
            crop_height=item["bucket_h"],
            flip_x=flip in ("x", "xy"),
            **self._model,
        )
        # AI Toolkit's constructor reads flip_y from the flip_x argument; set what was stored.
        file_item.flip_y = flip in ("y", "xy")
        if frames is not None:
            file_item.num_frames = len(frames)
        file_item.network_weight = item["network_weight"]
        file_item.loss_multiplier = item["loss_multiplier"]
        self._made[item_id] = file_item
        return file_item


def _check_stackable(tensors: Sequence[Any], paths: Sequence[str]) -> None:
    """Raises a clear error where AI Toolkit's batch would fail to stack the single raw-size
    control of its items (``torch.cat`` of tensors of different sizes)."""
    from .. import ConfigError

    shapes = [tuple(t.shape) for t in tensors]
    if len(set(shapes)) > 1:
        listed = ", ".join(f"{os.path.basename(p)} {s[2]}x{s[1]}" for p, s in zip(paths, shapes))
        raise ConfigError(
            "this model takes its control image at its own size, and AI Toolkit stacks one control per item "
            f"into one tensor, which needs the controls of a batch to be the same size; they are not ({listed}). "
            "Train with batch_size 1, or resize the control images of a bucket to one size."
        )


class PromptLayout:
    """How the model's ``PromptEmbeds`` are stored, and how a batch's stored embeddings become
    them again: the field ``text`` with outputs ``embeds``, ``pooled`` and ``attention_mask``
    (those the model gives), in the dtypes the model gave them.

    larder pads a batch's embeddings to its longest caption (``text.mask`` marks each one's
    rows); each item gets its own rows back, and AI Toolkit's batch constructor pads them as
    its own loader does (``concat_prompt_embeds``, on the model's padding side).
    """

    FIELD = "text"
    #: The differential output preservation captions' embeddings (trigger word replaced by the
    #: class), where the job uses it.
    DOP_FIELD = "dop"

    def __init__(self, probe: Any):
        import torch

        from toolkit.prompt_utils import PromptEmbeds  # type: ignore[import-not-found]

        if not torch.is_tensor(probe.text_embeds) or isinstance(probe.attention_mask, (list, tuple)):
            raise NotImplementedError(
                f"this model's prompt embeddings ({type(probe).__name__} holding lists of tensors) are not served by larder yet"
            )
        self._class = PromptEmbeds
        self.dtypes = {"embeds": probe.text_embeds.dtype}
        if probe.pooled_embeds is not None:
            self.dtypes["pooled"] = probe.pooled_embeds.dtype
        if probe.attention_mask is not None:
            self.dtypes["attention_mask"] = probe.attention_mask.dtype

    def arrays(self, embeds: Any) -> Dict[str, Any]:
        """The stored outputs of one ``PromptEmbeds`` (batch dimension 1)."""
        out = {"embeds": embeds.text_embeds}
        if "pooled" in self.dtypes:
            out["pooled"] = embeds.pooled_embeds
        if "attention_mask" in self.dtypes:
            out["attention_mask"] = embeds.attention_mask
        return {name: value.detach().float() for name, value in out.items()}

    def embeds(self, batch: Dict[str, Any], k: int, field: str = FIELD) -> Any:
        """Item ``k``'s ``PromptEmbeds`` from a batch's text field ``field``."""
        rows = batch[f"{field}.embeds"].shape[1]
        mask = batch.get(f"{field}.mask")
        n = int(mask[k].sum()) if mask is not None else rows
        text = batch[f"{field}.embeds"][k : k + 1, :n].to(self.dtypes["embeds"])
        args: Any = text
        if "pooled" in self.dtypes:
            args = [text, batch[f"{field}.pooled"][k : k + 1].to(self.dtypes["pooled"])]
        attention = None
        if "attention_mask" in self.dtypes:
            attention = batch[f"{field}.attention_mask"][k : k + 1, :n].to(self.dtypes["attention_mask"])
        return self._class(args, attention_mask=attention)


class Loader:
    """What AI Toolkit's trainer does with its data loader, over a larder loader.

    The trainer iterates one epoch per ``iter()``; at its end it sets ``len`` to None and calls
    ``dataset.setup_epoch()`` (``trigger_dataloader_setup_epoch``). larder's loader moves to the
    next epoch on the next ``iter()`` by itself, so ``setup_epoch`` has nothing to do.
    """

    def __init__(self, native: Any, make_batch: BatchMaker, group: str = "train", rank: int = 0):
        self.native = native
        self.make_batch = make_batch
        self.group = group
        self.rank = rank
        self.len = None
        self.dataset = _Epochs()
        # What the run trained on, batch by batch, for checking a data order (docs/aitk.md).
        self.batch_log: Optional[str] = os.environ.get("LARDER_AITK_BATCH_LOG") or None

    def __iter__(self):
        for batch in self.native:
            dto = self.make_batch(batch)
            if self.batch_log:
                record = {
                    "group": self.group,
                    "rank": self.rank,
                    "epoch": int(batch["epoch"]),
                    "index": int(batch["index"]),
                    "items": [f.path for f in dto.file_items],
                    "captions": list(batch["captions"]),
                    # The shapes of the tensors the trainer gets, where the batch has them.
                    "shapes": {
                        name: list(getattr(dto, name).shape)
                        for name in ("tensor", "latents", "first_frame_latents", "audio_tensor", "clip_image_tensor")
                        if getattr(dto, name, None) is not None
                    },
                }
                with open(self.batch_log, "a") as log:
                    log.write(json.dumps(record) + "\n")
            yield dto

    def __len__(self) -> int:
        return len(self.native) if self.len is None else self.len


class _Epochs:
    """The ``dataset`` AI Toolkit calls ``setup_epoch`` on between epochs, and whose
    ``clip_vision_unconditional_cache`` (files of unconditional CLIP vision embeddings) its
    trainer reads for regularisation batches of an adapter with cached embeddings."""

    def __init__(self) -> None:
        self.clip_vision_unconditional_cache: List[str] = []

    def setup_epoch(self) -> None:
        pass


def dataset_views(raw: List[Dict[str, Any]], expanded: Sequence[Any]) -> List[Any]:
    """For each dataset as written, the first of AI Toolkit's ``DatasetConfig``s made from it.

    AI Toolkit makes one DatasetConfig per resolution of each dataset (in order); larder keeps
    a dataset's resolutions together, so its dataset ``i`` is the group that starts here.
    """
    views, at = [], 0
    for dataset in raw:
        resolution = dataset.get("resolution", 512)
        views.append(expanded[at])
        at += len(resolution) if isinstance(resolution, list) else 1
    return views
