"""The machine a benchmark ran on, named once for every benchmark script and report.

:func:`cpu_description` reads the CPU model, the instruction-set flags that decide which exact
Dense kernel is fastest (``stft_neuro/sim/dense_kernels.py``: AVX512-VNNI makes torch's int8
``_int_mm`` fast, without it a naive loop) and the torch settings; :func:`cpu_name` is the one line
the benchmark scripts print and store beside their figures (``bench/*.py``, the quality sweep's
report, ``stft_neuro/quality_sweep.py``).
"""
from __future__ import annotations

import os
import re
import subprocess

import torch

from stft_neuro.sim.dense_kernels import ENV_VAR as DENSE_KERNEL_ENV_VAR

#: /proc/cpuinfo flags that decide which kernel is fast: AVX2 / AVX-512 float32 FMA width,
#: AVX512-VNNI (torch's CPU ``_int_mm`` uses oneDNN only with it), AVX-VNNI, AMX (int8/bf16 tiles).
RELEVANT_FLAGS: tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                                   "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
#: Environment variables that change which code paths torch, oneDNN and MKL take.
ISA_ENV_VARS: tuple[str, ...] = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                 "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS", DENSE_KERNEL_ENV_VAR)


def cpu_description() -> dict:
    """The CPU and torch settings that decide kernel speed (for printing beside benchmark figures).

    Keys: ``model``, ``vendor``, ``logical_cpus``, ``flags`` (the ``RELEVANT_FLAGS`` present),
    ``torch``, ``torch_cpu_capability`` (ATen's vectorisation level), ``torch_threads``,
    ``mkldnn_enabled``, ``int_mm_path`` (``"oneDNN"`` where torch's CPU ``_int_mm`` calls oneDNN:
    mkldnn enabled and ``avx512_vnni``; else ``"naive loop"``), ``env`` (``ISA_ENV_VARS`` set).
    """
    model = vendor = ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = m.group(1).strip() if m else ""
        m = re.search(r"^vendor_id\s*:\s*(.+)$", text, re.M)
        vendor = m.group(1).strip() if m else ""
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(m.group(1).split()) if m else set()
    except OSError:
        pass
    if not model:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
            m = re.search(r"^Model name:\s*(.+)$", out, re.M)
            model = m.group(1).strip() if m else ""
            m = re.search(r"^Flags:\s*(.+)$", out, re.M)
            flags = set(m.group(1).split()) if m else flags
        except (OSError, subprocess.SubprocessError):
            pass
    mkldnn = bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    return {
        "model": model or "unknown",
        "vendor": vendor,
        "logical_cpus": os.cpu_count(),
        "flags": [f for f in RELEVANT_FLAGS if f in flags],
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "mkldnn_enabled": mkldnn,
        "int_mm_path": "oneDNN" if (mkldnn and "avx512_vnni" in flags) else "naive loop",
        "env": {k: os.environ[k] for k in ISA_ENV_VARS if k in os.environ},
    }


def cpu_name() -> str:
    """One line naming the machine: ``"<model>, <n> CPUs, flags: <avx2 avx512_vnni ...>"`` (the
    :data:`RELEVANT_FLAGS` present), for printing and storing beside benchmark figures."""
    d = cpu_description()
    return f"{d['model']}, {d['logical_cpus']} CPUs, flags: {' '.join(d['flags']) or 'none'}"
