"""Encoders for :func:`larder.prepare`: a callable plus the identity that keys its cache.

larder stores every encoder output under a key that includes the encoder's identity, so a
different model, dtype or scaling factor recomputes its entries instead of serving stale ones.
A callable declares its identity through attributes; :class:`Encoder` sets them.

Example:
    >>> def vae(pixels):  # (N, 3, H, W) float32 in [-1, 1]
    ...     with torch.no_grad():
    ...         x = torch.from_numpy(pixels).to("cuda", torch.bfloat16)
    ...         latents = autoencoder.encode(x).latent_dist.sample()
    ...     return (latents - shift) * scale  # a torch tensor on the GPU is fine
    >>> larder.prepare(cfg, "store", image_encoders={
    ...     "latent": larder.Encoder(vae, "black-forest-labs/FLUX.1-dev/vae bf16",
    ...                              scaling_factor=scale, shift_factor=shift)})
"""

from __future__ import annotations

from typing import Any, Callable, Optional


class Encoder:
    """A callable with the identity larder keys its outputs by.

    Image encoders (``image_encoders=``) receive one bucket's batch as a NumPy array
    ``(N, 3, H, W)``, or ``(N, F, 3, H, W)`` for video clips of F frames: float32 in [-1, 1]
    (``pixels="float32"``, as AI Toolkit feeds its VAE) or the stored uint8 values
    (``pixels="uint8"``). CLIP encoders (``clip_encoders=``) receive
    CLIP-preprocessed float32 ``(N, 3, S, S)``, or with ``pixels="uint8"`` the image CLIP sees
    as uint8 ``(1, 3, H, W)`` at its own size (a dataset's ``clip_image_path`` image squared),
    one per call, to run their own image processor. Text encoders (``text_encoders=``) receive a
    list of N captions and return a dict of arrays with N first (``"embeds"``, ``"pooled"``,
    ``"mask"``...) or one array (stored as ``"embeds"``). Arrays may be NumPy arrays or torch
    tensors on any device; larder copies them to host float32 and stores them with the codec.

    A text encoder made with ``controls=True`` (an edit model whose text encoder sees the
    control images, AI Toolkit's ``encode_control_in_text_embeddings``) is called with the
    captions and, per caption, the list of its item's control image files (empty for
    captions encoded alone: the empty and the dropout captions, and items without controls).
    larder then stores one embedding per caption and controls, keyed by both.

    Args:
        fn: The callable.
        identity: Everything that changes the output: model id, revision, dtype, options.
        scaling_factor: The latent scaling factor ``fn`` applied (recorded in the catalog and
            the key; larder does not apply it).
        shift_factor: The latent shift factor ``fn`` applied (recorded likewise).
        pixels: ``"float32"`` (default) or ``"uint8"``, for image encoders.
        controls: For text encoders: call ``fn(captions, controls)`` with each caption's
            control image files (see above).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        identity: str,
        *,
        scaling_factor: Optional[float] = None,
        shift_factor: Optional[float] = None,
        pixels: str = "float32",
        controls: bool = False,
    ):
        if not callable(fn):
            raise TypeError(f"Encoder needs a callable, not {type(fn).__name__}")
        if not isinstance(identity, str) or not identity.strip():
            raise ValueError("Encoder needs a non-empty identity string (model id, dtype, ...)")
        if pixels not in ("float32", "uint8"):
            raise ValueError(f"pixels must be 'float32' or 'uint8', not {pixels!r}")
        self.fn = fn
        self.larder_identity = identity
        self.larder_scaling_factor = scaling_factor
        self.larder_shift_factor = shift_factor
        self.larder_pixels = pixels
        self.larder_controls = bool(controls)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"Encoder({self.larder_identity!r})"
