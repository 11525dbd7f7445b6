"""The machine a figure was measured on: CPU model, the instruction sets kernels care about, threads, GPU."""

from __future__ import annotations

import os
import platform

import onnxruntime as ort
import torch

INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # INT8 dot-product instructions


def _cpuinfo() -> tuple[str, set[str]]:
    """CPU model name and flags from /proc/cpuinfo (Linux); the platform's name and no flags elsewhere."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass  # not Linux: the platform's own name, no flags
    return model, flags


def cpu_features() -> dict[str, object]:
    """CPU model and the instruction sets INT8 and FP32 kernels care about (VNNI/AMX for INT8)."""
    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "flags": [f for f in INTERESTING_FLAGS if f in flags],
        "int8_acceleration": any(f in flags for f in INT8_FLAGS),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
    }


def describe_machine() -> str:
    """One line for the top of a benchmark's output."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{_cpuinfo()[0]}; {os.cpu_count()} logical CPUs; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {gpu}; Python {platform.python_version()}"
    )
