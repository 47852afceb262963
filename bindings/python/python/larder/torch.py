"""PyTorch helpers: batches as tensors that share the NumPy arrays' memory."""

from __future__ import annotations

from typing import Any, Dict


def as_tensors(batch: Dict[str, Any]) -> Dict[str, Any]:
    """Turns a batch's arrays into torch tensors without copying.

    Fields stored as bfloat16 arrive as uint16 arrays (NumPy has no bfloat16) and are viewed as
    ``torch.bfloat16``; float16 as ``torch.float16``. Non-array entries are passed through.

    Args:
        batch: A batch from :class:`larder.DataLoader`.

    Returns:
        dict: the same keys, arrays replaced by tensors.
    """
    import numpy as np
    import torch

    views = {"BF16": torch.bfloat16, "F16": torch.float16, "BOOL": torch.bool}
    dtypes = batch.get("dtypes", {})
    out: Dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            tensor = torch.from_numpy(value)
            if dtypes.get(key) in views:
                tensor = tensor.view(views[dtypes[key]])
            out[key] = tensor
        else:
            out[key] = value
    return out
