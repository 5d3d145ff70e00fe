"""Run folders: weights as safetensors, config and metadata as JSON.

A run folder (``runs/<name>/``) holds::

    config.json         the resolved Config
    meta.json           feature widths, class names, training progress, chosen calibration b
    model.safetensors   the final model (stage 2, or stage 1 when only stage 1 ran)
    last.safetensors    the latest epoch's weights, for --resume
    last_optim.pt       optimizer + scheduler state of that epoch (tensors only; loaded weights_only)
    metrics.json        the S/U/HM/ZSL results

A QAT run (``stft-neuro train --qat --from RUN``) has ``"deploy": true`` in meta.json: its model
is loaded with the spiking branch in deploy mode (Loihi 2 fixed-point arithmetic).

Reading never executes code: safetensors and JSON, and ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from stft_neuro import config as config_mod
from stft_neuro.errors import CheckpointError, ConfigError
from stft_neuro.model.stft import STFT

FORMAT = "stft-neuro-run/1"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """A temporary sibling ``.<name>.partial-*`` of ``out`` to write a whole folder into.

    When the block ends normally it takes the place of ``out`` (an existing ``out`` is kept aside
    until the new one is in place, then removed); on any exception, Ctrl-C included, it is removed
    and ``out`` is as it was. So a reader finds ``out`` complete or not at all. The folder and its
    files get the modes of the umask (``mkdtemp`` makes the folder 0700). The one way the
    project writes an output folder (export's bundle, simulate's records, deploy's bundle)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    old = None
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        for p in (tmp, *tmp.rglob("*")):
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_fits(bench: Any, meta: dict, where: Any) -> None:
    """Refuse (one-line :class:`CheckpointError` naming ``where``) a benchmark whose feature widths
    or class count differ from those the checkpoint (``meta``) was trained on."""
    for what, got, want in (("audio", bench.audio_dim, meta["audio_dim"]),
                            ("visual", bench.visual_dim, meta["visual_dim"])):
        if got != want:
            raise CheckpointError(f"{where}: model expects {what} features of width {want}, "
                                  f"the benchmark has {got}")
    if len(bench.class_names) != len(meta["class_names"]):
        raise CheckpointError(f"{where}: trained on {len(meta['class_names'])} classes, "
                              f"the benchmark has {len(bench.class_names)}")


def save_weights(model: torch.nn.Module, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"format": FORMAT})
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: not a stft-neuro run (missing {path.name})")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: {what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object")
    return obj


def load_run(run: str | Path, weights: str = "model.safetensors",
             map_location: str = "cpu") -> tuple[STFT, config_mod.Config, dict]:
    """Load a run folder (or a path to its ``model.safetensors``) -> (model, config, meta)."""
    path = Path(run)
    if path.is_file() and path.suffix == ".safetensors":
        path, weights = path.parent, path.name
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a run folder")
    raw = read_json(path / "config.json", "config")
    meta = read_json(path / "meta.json", "metadata")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / 'meta.json'}: not a stft-neuro run (format {meta.get('format')!r})")
    try:
        cfg = config_mod.from_run_dict(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{path / 'config.json'}: {exc}") from None
    file = path / weights
    if not file.is_file():
        raise CheckpointError(f"{path}: no {weights} (training did not finish? try --resume)")
    try:
        state = load_file(str(file), device=map_location)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{file}: not a safetensors file ({type(exc).__name__})") from None
    model = STFT(cfg, int(meta["audio_dim"]), int(meta["visual_dim"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{file}: weights do not match the config "
                              f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    if meta.get("deploy"):
        if model.spiking is None or float(model.spiking.chip.input_scale) <= 0:
            raise CheckpointError(f"{file}: a deploy-mode run without a calibrated spiking branch")
        model.spiking.set_deploy(True)
    return model.to(map_location), cfg, meta
