"""harness.models.kernels: the process-wide kernel choices a CUDA run makes (the GPU side is in test_gpu_paths)."""

from __future__ import annotations

import torch

from harness.models.kernels import configure_cuda_kernels


def test_cuda_runs_leave_cudnn_attention_out():
    """cuDNN's SDPA plans per shape; a configured process never offers it to scaled_dot_product_attention, and the
    backends that do not plan per shape stay on."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        configure_cuda_kernels()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
