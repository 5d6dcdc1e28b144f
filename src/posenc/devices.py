"""Devices and autocast dtypes: ``resolve_device`` ("auto", "cpu", "cuda:1", ...) and ``resolve_dtype``
("auto", "float32", "bfloat16", "float16"), each refusing what the machine cannot do with a
``ValueError`` that names both."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"TrainConfig.device={device!r} is not a torch device (try 'cpu', 'cuda', 'cuda:1')") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():  # else an AssertionError deep in torch
        raise ValueError(f"TrainConfig.device={device!r}: CUDA is not available on this machine (try 'cpu' or 'auto')")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"TrainConfig.device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type not in ("cpu", "cuda"):  # mps, xla, xpu, ...: else a traceback at the model's first .to()
        try:
            torch.empty(1, device=resolved)
        except (RuntimeError, AssertionError):
            raise ValueError(
                f"TrainConfig.device={device!r}: this machine (or this torch build) has no {resolved.type} device; "
                "try 'cpu' or 'auto'"
            ) from None
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA (the study's setting) and float32 elsewhere. A dtype the device
    cannot autocast to raises ValueError naming both."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"TrainConfig.dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    if torch_dtype is torch.float32:
        return torch_dtype
    if device.type == "cuda" and torch_dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"TrainConfig.dtype={dtype!r} is not supported by {torch.cuda.get_device_name(device)}")
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"TrainConfig.dtype={dtype!r}: device {device} has no autocast support for it")
    try:  # probe once, here, rather than fail deep inside the first step
        with torch.autocast(device.type, dtype=torch_dtype):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except RuntimeError as e:
        raise ValueError(f"TrainConfig.dtype={dtype!r} cannot run on device {device}: {e}") from None
    return torch_dtype
