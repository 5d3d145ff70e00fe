"""Write one benchmark's section of BENCHMARKS.md, leaving the other sections as they are.

Each benchmark script owns one ``## heading`` section and replaces it wholesale on every run, with
the command that made it, the machine, and the date.
"""
from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
PREAMBLE = """# Benchmarks

Every figure here was written by a script in `bench/`; each section names the command that made it.
Times are medians of repeated runs; ratios are measured side by side in one run (absolute times on
shared machines drift). Energy figures, where present, are estimates and say so.
"""


def machine() -> str:
    """The machine line of a section: ``stft_neuro.machine.cpu_name`` and the software."""
    import torch

    from stft_neuro.machine import cpu_name
    return (f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}")


def replace_section(heading: str, body: str, command: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the section ``## heading`` of ``path`` with ``body``."""
    text = path.read_text() if path.exists() else PREAMBLE
    stamp = time.strftime("%Y-%m-%d")
    section = (f"## {heading}\n\nCommand: `{command}`  \nMachine: {machine()}; run {stamp}.\n\n"
               f"{body.strip()}\n")
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text.rstrip() + "\n")
    os.replace(tmp, path)
