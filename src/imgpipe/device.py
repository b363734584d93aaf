"""Pick the training device: CUDA if present, else Apple's MPS, else the CPU; params may force one."""

import functools
import os
import platform

import torch

from imgpipe.config import DEVICES
from imgpipe.errors import require


def available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return kind == "cpu"


def pick_device(requested: str = "auto") -> torch.device:
    require(requested in DEVICES, "device", f"unknown device {requested!r}; choose one of: {', '.join(DEVICES)}")
    if requested == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available(kind)))
    require(available(requested), "device", f"{requested} was asked for but is not available on this machine; use auto")
    return torch.device(requested)


def finish_queued(device: torch.device) -> None:
    """Wait until the device has done the work queued on it: GPU work is asynchronous, so a clock read without this
    stops at the queueing. A no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def describe(device: torch.device) -> str:
    """A human name for the device, recorded with every measurement."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


@functools.cache  # read once per process: every training (a cross-fitted fold, a sweep trial) records it
def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:  # not Linux
        name = ""
    return name or platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    """What computed a run, for comparing figures across machines: the GPU's name, or the CPU's model, cores and
    whether it computes bf16 natively (the same settings give other last digits on other hardware)."""
    if device.type != "cpu":
        return describe(device)
    return f"{cpu_name()} ({os.cpu_count()} cores{', native bf16' if has_native_bf16(device) else ''})"


def has_native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bfloat16 natively: CUDA from Ampere on, CPUs with AVX512-BF16 or AMX.
    Elsewhere bf16 is emulated, slower than float32, so autocast is not worth it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # by default True on a V100 or T4 too
    if device.type == "cpu":
        return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False
