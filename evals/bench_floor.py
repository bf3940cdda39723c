"""Weight-read floors beside decode benchmarks (not collected: no test here). A decode step reads every weight once,
so N steps cannot take less than N x weight bytes / memory bandwidth; the bandwidth is measured on the GPU at hand
(a device-to-device copy), not taken from a datasheet."""

from __future__ import annotations

import time

import torch


def copy_bandwidth() -> float:
    """Bytes read plus written per second of a 4 GiB device-to-device copy (median of 5, after one warm-up)."""
    src = torch.empty(2**31, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * 2**31 / sorted(times[1:])[2]


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
