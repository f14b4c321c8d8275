"""The machine a figure came from: CPU model, the flags that matter for precision, torch threads, GPU."""

from __future__ import annotations


def describe() -> str:
    """One line: ``lscpu``'s model name (from /proc/cpuinfo), the bf16/int8 flags, torch threads, CUDA."""
    import torch

    from ner_core.runtime.hardware import Hardware, cpu_model_name, physical_cores

    hw = Hardware.detect("cpu")
    flags = ", ".join(sorted(hw.cpu_flags)) or "none of amx_bf16/avx512_bf16/avx512_vnni/avx_vnni/amx_int8"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (
        f"machine: {cpu_model_name()}; flags: {flags}; {physical_cores()} physical cores, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}; {gpu}"
    )
