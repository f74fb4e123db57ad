"""
Where a run computes and in which precision: the device (--device) and bf16 autocast or fp32
(--precision). bf16 autocast keeps fp32 master weights, and the losses, the mixture and every
metric are computed in fp32 (engine.py, evaluation.py). What auto chooses on a CPU, and the
measurements behind it, are in docs/speed.md.

Usage:
    device, autocast = pick_device("auto", "auto")   # e.g. (device('cpu'), contextlib.nullcontext)
    with autocast():
        logits = model(ids, mask)
"""

from contextlib import nullcontext

import torch


class DeviceError(RuntimeError):
    """A device or precision this machine does not have."""


CPU_AUTO_PRECISION = "bf16"  # --precision auto on a CPU with native bf16 instructions (docs/speed.md)


def cpu_has_native_bf16():
    """Does this CPU multiply bf16 natively (the avx512_bf16 or amx_bf16 flag of /proc/cpuinfo)? Where that
    cannot be read (not Linux), no: fp32 is the safe guess."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(device, precision):
    """fp32 or bf16: --precision as given, or auto's choice on this device (without native bf16 a CPU
    emulates it, slower than fp32)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if CPU_AUTO_PRECISION == "bf16" and cpu_has_native_bf16() else "fp32"


def pick_device(name, precision="auto"):
    """(device, autocast context factory) for --device NAME and --precision."""
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          "cpu" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA device is available")
    if resolve_precision(device, precision) == "fp32":
        return device, nullcontext
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise DeviceError("--precision bf16: this CPU has no bf16 instructions (avx512_bf16 / AMX); use fp32")
    return device, (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
