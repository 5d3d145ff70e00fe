"""A run's deployment plan: computed once, on CPU, stored in the run folder, read by every consumer.

A float run's spiking branch has no input payload scale until it is calibrated on data (the
``percentile`` of |input current| over the first :data:`CALIBRATION_SAMPLES` samples of
``stage_2_train`` maps to the largest ``input_bits`` payload, ``SpikingBranch.calibrate_input``);
the plan (``DeploymentPlan``: Loihi weights, exponents, thresholds, the input scale) follows from
that scale and the weights through the float64 quantizer. Calibrated on a GPU, the scale can differ
from a CPU calibration in the last bit, so consumers that each calibrated on their own device
(``eval``, ``export``, ``resources``, ``simulate``, QAT) could run different plans, and ``simulate
--host torch`` refused a bundle made from the same run. Hence:

- the plan is derived on a CPU copy of the spiking branch (:func:`derive_plan`), whatever device
  the caller holds the model on, and stored as ``RUN/plan.safetensors`` (:data:`PLAN_FILE`) when
  the run is written (``stft-neuro train``, the demo);
- every consumer reads it (:func:`run_plan`): the input scale is set from the stored plan and the
  plan of the run's weights with that scale must equal the stored one, value for value (else a
  one-line :class:`RunPlanError`: the file is not this run's);
- a run folder written before plans were stored gets its plan derived once by the first consumer,
  saved there, and says so (a ``logging`` warning naming the file); where the folder cannot be
  written, every consumer derives the same plan (same CPU computation) and the warning says that.

A QAT run (``meta.json`` ``"deploy": true``) carries its calibrated scale in its weights: its plan
is its own (``model.spiking.deployment_plan()``), nothing is stored.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from stft_neuro.data.benchmark import Split
from stft_neuro.errors import CheckpointError
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan, PlanFormatError

log = logging.getLogger(__name__)

#: The stored plan of a float run, in its run folder.
PLAN_FILE = "plan.safetensors"
#: Samples of ``stage_2_train`` the input payload scale is calibrated on (the first ones).
CALIBRATION_SAMPLES = 512


class RunPlanError(CheckpointError):
    """A run folder's stored plan that cannot be read or is not the plan of the run's weights."""


def _calibration_batch(split: Split, n: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """audio (n, S, Da), visual (n, S, Dv), lengths (n,) of the first ``n`` samples, on ``device``."""
    idx = np.arange(min(n, len(split.labels)))
    return tuple(torch.as_tensor(x[idx], device=device) for x in (split.audio, split.visual, split.lengths))


def calibrate(model: Any, split: Split, device: torch.device, n: int = CALIBRATION_SAMPLES) -> float:
    """Set ``model``'s spiking branch input payload scale from the first ``n`` samples of ``split``
    (features moved to ``device``, where the model is); returns the scale."""
    if model.spiking is None:
        raise CheckpointError("this run has no spiking branch (spiking.enabled=false): nothing to quantize")
    return model.spiking.calibrate_input(*_calibration_batch(split, n, device))


def same_plan(a: DeploymentPlan, b: DeploymentPlan) -> bool:
    """True when two plans are equal value for value (header, weights, bias mantissas)."""
    if a.to_dict() != b.to_dict():
        return False
    return all(np.array_equal(x.weight, y.weight) and np.array_equal(x.bias_mant, y.bias_mant)
               for x, y in zip(a.network.layers, b.network.layers))


def derive_plan(model: Any, split: Split) -> DeploymentPlan:
    """The plan of a float model's spiking branch calibrated on ``split``, computed on a CPU copy
    (the model itself is not changed)."""
    branch = copy.deepcopy(model.spiking).cpu()
    branch.calibrate_input(*_calibration_batch(split, CALIBRATION_SAMPLES, torch.device("cpu")))
    return branch.deployment_plan()[0]


def set_plan(model: Any, plan: DeploymentPlan, where: str) -> None:
    """Give ``model``'s spiking branch the input scale of ``plan`` and check that the plan of its
    weights at that scale is ``plan`` (:class:`RunPlanError` naming ``where`` otherwise)."""
    chip = model.spiking.chip
    chip.input_scale.fill_(float(plan.input_scale))
    if float(chip.input_scale) != float(plan.input_scale) or not same_plan(chip.deployment_plan()[0], plan):
        raise RunPlanError(f"{where}: not the deployment plan of this run's weights (delete it to derive "
                           "it again)")


def store_plan(run_dir: str | Path, plan: DeploymentPlan) -> Path:
    """Write ``plan`` as the run's :data:`PLAN_FILE` (atomically)."""
    return plan.save(Path(run_dir) / PLAN_FILE)


def run_plan(run_dir: str | Path, model: Any, meta: dict, calibration_split: Callable[[], Split]) -> DeploymentPlan:
    """The deployment plan of the run at ``run_dir``, whose model ``model`` was loaded from it.

    QAT run: its own plan. Float run: the stored :data:`PLAN_FILE`, its input scale set on
    ``model`` (:func:`set_plan`); without one, derived once (:func:`derive_plan` on
    ``calibration_split()``, the run's own ``stage_2_train``, called only then), stored and
    announced. ``model`` stays in its mode (float); callers switch to deploy mode when they run it."""
    if model.spiking is None:
        raise CheckpointError(f"{run_dir}: this run has no spiking branch (spiking.enabled=false): "
                              "nothing to quantize")
    if meta.get("deploy"):
        return model.spiking.deployment_plan()[0]
    path = Path(run_dir) / PLAN_FILE
    if path.is_file():
        try:
            plan = DeploymentPlan.load(path)
        except PlanFormatError as exc:
            raise RunPlanError(str(exc)) from None
        set_plan(model, plan, str(path))
        return plan
    plan = derive_plan(model, calibration_split())
    try:
        store_plan(run_dir, plan)
        log.warning("%s: the run has no stored deployment plan (written before plans were stored): "
                    "derived on CPU from stage_2_train and saved as %s", run_dir, path)
    except OSError as exc:
        log.warning("%s: the run has no stored deployment plan and %s cannot be written (%s): derived "
                    "on CPU from stage_2_train, as every consumer derives it", run_dir, path,
                    exc.strerror or type(exc).__name__)
    set_plan(model, plan, f"{run_dir} (derived plan)")
    return plan
