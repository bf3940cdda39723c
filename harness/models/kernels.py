"""Process-wide kernel choices for forwards on a GPU, made once where a run picks CUDA.

cuDNN's fused attention builds an execution graph for every new problem shape (batch, query and key lengths):
tens of milliseconds of host time each, which recent PyTorch pays first on Hopper, where it ranks cuDNN above
flash and memory-efficient attention. A harness run changes shape on nearly every call (capability batches,
packed selection rows, each judge batch and each of its decode steps), so the host sat in attention for ~30 s of a
cold gemma-2b-it rehearsal on an H100. Without cuDNN, SDPA takes flash attention (no mask) or the
memory-efficient kernel (a mask), neither of which plans per shape.
"""

from __future__ import annotations

import torch


def configure_cuda_kernels() -> None:
    """Leave cuDNN's SDPA out of the backends scaled_dot_product_attention chooses from (for this process)."""
    torch.backends.cuda.enable_cudnn_sdp(False)
