"""What this machine offers: device kind, count, memory (for status and adverts)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["HardwareInfo", "detect_hardware", "free_accelerator_memory", "process_rss_bytes"]


@dataclass(frozen=True, slots=True)
class HardwareInfo:
    device_kind: str
    device_count: int
    memory_bytes: int
    device_name: str


def _system_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def detect_hardware(device: torch.device) -> HardwareInfo:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return HardwareInfo("cuda", torch.cuda.device_count(), int(props.total_memory), props.name)
    return HardwareInfo("cpu", os.cpu_count() or 1, _system_memory(), "cpu")


def free_accelerator_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return 0


def process_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
