"""``python -m larder.aitk`` as one of several CPU ranks, for torchrun:

    torchrun --nproc_per_node 2 aitk_cpu_ranks.py run JOB.yaml --aitk PATH

One thing differs from a run on several GPUs, and it is accelerate's, not larder's or AI
Toolkit's: AI Toolkit's ``prepare_accelerator`` passes every model, the frozen VAE included,
to ``accelerator.prepare``. On GPUs accelerate wraps a module in DistributedDataParallel only
when it has a parameter that trains; on CPU ranks (``DistributedType.MULTI_CPU``) it wraps every
module, and DDP refuses one with nothing to train. Here the CPU ranks get the GPU rule, so the
run goes through the same code the GPU ranks do.
"""

import runpy
import sys

from accelerate import Accelerator
from accelerate.utils import DistributedType

_prepare_model = Accelerator.prepare_model


def _prepare_model_as_on_gpus(self, model, device_placement=None, evaluation_mode=False):
    if self.distributed_type == DistributedType.MULTI_CPU and not any(p.requires_grad for p in model.parameters()):
        # accelerate's "evaluation mode" differs from training mode in the DDP wrapping only.
        evaluation_mode = True
    return _prepare_model(self, model, device_placement=device_placement, evaluation_mode=evaluation_mode)


if __name__ == "__main__":
    Accelerator.prepare_model = _prepare_model_as_on_gpus
    sys.argv[0] = "larder.aitk"
    runpy.run_module("larder.aitk", run_name="__main__", alter_sys=True)
