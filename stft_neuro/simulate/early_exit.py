"""Early exit in the hybrid loop (issue 17, part 3): a sample stops stepping once its readout is
settled, by a rule calibrated on the run's stage-1 validation split.

**The readout after step t.** After step ``t`` (0-based; ``t + 1`` steps ran) the host makes the
prediction the run would make had it stopped there: the TSF readout of the last layer's spikes of
steps ``0..t`` (the steps not run are zeros, exactly what the record of a stopped sample holds),
the fusion with the transformer, the nearest class embedding with the calibration ``b`` on the
seen classes (``protocol.predict``), and the **margin**: the runner-up class's distance minus the
nearest's (``b`` applied; distance units of the joint space, >= 0).

**The rule** (:class:`ExitRule`): a sample stops after step ``t`` when ``t + 1 >= min_steps`` and

- its margin is at least ``margin`` (confidence), or
- its prediction has not changed for ``patience`` steps (the predictions after steps
  ``t - patience .. t`` are equal, all made at ``>= min_steps`` steps: stability);

either part may be off (None). ``min_steps`` is ``L + 1`` by default (``L`` chip layers: the last
layer's first possible spike is at step ``L``, so before that the readout holds no chip output).
A sample that never satisfies the rule runs all ``T`` steps.

**Calibration** (:func:`calibrate`): the run's model (torch host) drives the reference simulator
(bit-exact, = Lava = torch deploy mode) over all ``T`` steps on stage-1 validation
(``stage_1_val_seen`` + ``stage_1_val_unseen``, that stage's classes, the run's ``b``); the
spikes of step ``t`` do not depend on later steps, so the predictions and margins after every step
of a full run are exactly those of runs stopped there. Every rule of the grid (patience None or
1..T-min_steps, x margin None or the 0, 2, ..., 100th percentiles of the validation margins) is
applied offline (:func:`exit_steps`), and the rule with the fewest mean steps whose validation HM
is at most ``max_hm_drop`` points below the full-T HM is chosen (ties: the higher HM, then the
larger margin and patience). "Nothing early" (both None) is in the grid, so a rule always exists.
It is stored as JSON (:data:`RULE_FILE`, in the run folder) with the plan it was calibrated for
(:func:`plan_digest`), the ``b``, and its validation figures.

**Online** (:class:`Judge`): the stop rule of ``stft_neuro.closed_loop`` for one batch. It
computes the predictions only from step ``min_steps - 1`` on and only for the samples still
running; the host's extra work (readout + fusion + projection per judged step) is counted by
:func:`judged_steps` and priced by the report.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from stft_neuro.errors import UserError

#: The rule's file in a run folder (and the copy written beside the records).
RULE_FILE = "early_exit.json"
FORMAT = "stft-neuro/early-exit"
VERSION = 1
#: HM points the rule may lose on validation when ``--early-exit-max-drop`` is not given.
DEFAULT_MAX_HM_DROP = 0.5
#: Validation splits the rule is calibrated on (stage 1: that stage's seen / unseen classes).
VALIDATION_SPLITS = ("stage_1_val_seen", "stage_1_val_unseen")
#: Percentiles of the validation margins tried as the margin threshold.
MARGIN_PERCENTILES = tuple(range(0, 101, 2))


class EarlyExitError(UserError):
    """An early-exit rule that cannot be used or made; the message says why in one line."""


@dataclass(frozen=True)
class ExitRule:
    """When a sample stops (module doc). ``min_steps``: the fewest steps a sample runs (>= 1);
    ``patience``: steps the prediction must stay unchanged (>= 1), None: off; ``margin``: the
    runner-up's extra distance that suffices (>= 0, joint-space distance units), None: off.
    ``calibration``: how it was chosen (``max_hm_drop``, validation HM full / with the rule, mean
    steps, samples, ``plan_sha256``, ``bias``); empty for a hand-made rule."""

    min_steps: int
    patience: int | None = None
    margin: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.min_steps, bool) or not isinstance(self.min_steps, int) or self.min_steps < 1:
            raise EarlyExitError(f"early-exit rule: min_steps must be an integer >= 1, got {self.min_steps!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise EarlyExitError(f"early-exit rule: patience must be an integer >= 1 or null, got {self.patience!r}")
        if self.margin is not None and (isinstance(self.margin, bool) or not isinstance(self.margin, (int, float))
                                        or not math.isfinite(self.margin) or self.margin < 0):
            raise EarlyExitError(f"early-exit rule: margin must be a finite number >= 0 or null, got {self.margin!r}")

    @property
    def never(self) -> bool:
        """True when the rule never stops a sample early (both parts off)."""
        return self.patience is None and self.margin is None

    def describe(self) -> str:
        parts = [f"margin >= {self.margin:.4g}"] if self.margin is not None else []
        parts += [f"prediction unchanged for {self.patience} steps"] if self.patience is not None else []
        return (" or ".join(parts) or "never") + f", from step {self.min_steps}"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "min_steps": self.min_steps,
                "patience": self.patience, "margin": self.margin, "calibration": dict(self.calibration)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "ExitRule":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise EarlyExitError(f"{where}: not an early-exit rule (format {FORMAT!r} expected)")
        if d.get("version") != VERSION:
            raise EarlyExitError(f"{where}: early-exit rule version {d.get('version')!r}; this stft-neuro "
                                 f"reads version {VERSION}")
        unknown = sorted(set(d) - {"format", "version", "min_steps", "patience", "margin", "calibration"})
        if unknown:
            raise EarlyExitError(f"{where}: unknown key(s) {', '.join(unknown)}")
        if "min_steps" not in d:
            raise EarlyExitError(f"{where}: no 'min_steps'")
        try:
            return cls(min_steps=d["min_steps"], patience=d.get("patience"), margin=d.get("margin"),
                       calibration=dict(d.get("calibration") or {}))
        except EarlyExitError as exc:
            raise EarlyExitError(f"{where}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write the rule as JSON atomically (``checkpoint.atomic_write_text``)."""
        from stft_neuro.checkpoint import atomic_write_text
        p = Path(path)
        atomic_write_text(p, json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> "ExitRule":
        p = Path(path)
        if not p.is_file():
            raise EarlyExitError(f"{p}: no such early-exit rule file")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EarlyExitError(f"{p}: not valid JSON ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(d, str(p))


def plan_digest(plan: Any) -> str:
    """sha256 of a plan's header and integer arrays: the plan a rule was calibrated for."""
    h = hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True, default=str).encode())
    for layer in plan.network.layers:
        h.update(np.ascontiguousarray(layer.weight, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(layer.bias_mant, dtype=np.int64).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# predictions and the rule, offline

def predict_with_margin(joint: np.ndarray, class_emb: np.ndarray, candidates: np.ndarray,
                        seen: np.ndarray, bias: float) -> tuple[np.ndarray, np.ndarray]:
    """Joint embeddings (B, E) -> predicted global class (B,) int64 (``protocol.predict``) and the
    margin (B,) float64: the runner-up candidate's distance minus the nearest's, ``bias`` added to
    the seen classes' distances."""
    from stft_neuro.protocol import distances, predict
    dist = distances(np.asarray(joint, dtype=np.float32), class_emb)
    pred = predict(dist, candidates, seen, bias)
    cand = np.asarray(candidates, dtype=np.int64)
    adj = dist[:, cand].astype(np.float64) + np.where(np.isin(cand, seen), bias, 0.0)
    two = np.sort(adj, axis=1)[:, :2] if adj.shape[1] > 1 else np.concatenate([adj, adj + np.inf], 1)
    return pred, two[:, 1] - two[:, 0]


def exit_steps(rule: ExitRule, preds: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Steps each sample runs under ``rule`` (1..T), from the predictions and margins after every
    step of full runs, ``(T, N)`` each: what :class:`Judge` decides online."""
    T, N = preds.shape
    steps = np.full(N, T, dtype=np.int64)
    running = np.ones(N, dtype=bool)
    for t in range(rule.min_steps - 1, T - 1):
        done = np.zeros(N, dtype=bool)
        if rule.margin is not None:
            done |= margins[t] >= rule.margin
        k = rule.patience
        if k is not None and t - k >= rule.min_steps - 1:
            done |= np.all(preds[t - k:t + 1] == preds[t], axis=0)
        done &= running
        steps[done] = t + 1
        running &= ~done
    return steps


def judged_steps(steps: np.ndarray, min_steps: int, T: int) -> np.ndarray:
    """How many per-step predictions the :class:`Judge` made for samples that ran ``steps``: after
    every step from ``min_steps`` on, except the last of a full run -> (N,) int64."""
    s = np.minimum(np.asarray(steps, dtype=np.int64), T - 1)
    return np.maximum(0, s - int(min_steps) + 1)


def _hm(pred: np.ndarray, labels: np.ndarray, seen: np.ndarray) -> float:
    from stft_neuro.protocol import harmonic_mean, mean_per_class_accuracy
    is_seen = np.isin(labels, seen)
    return 100 * harmonic_mean(mean_per_class_accuracy(pred[is_seen], labels[is_seen]),
                               mean_per_class_accuracy(pred[~is_seen], labels[~is_seen]))


def choose_rule(preds: np.ndarray, margins: np.ndarray, labels: np.ndarray, seen: np.ndarray,
                min_steps: int, max_hm_drop: float) -> tuple[ExitRule, dict[str, Any]]:
    """The grid of the module doc on validation predictions and margins ``(T, N)`` -> the rule
    with the fewest mean steps within ``max_hm_drop`` HM points of the full run, and its figures."""
    T, N = preds.shape
    hm_full = _hm(preds[-1], labels, seen)
    judged = margins[min_steps - 1:T - 1].reshape(-1)
    taus = [None] + sorted({float(v) for v in np.percentile(judged, MARGIN_PERCENTILES)}) if judged.size else [None]
    patiences = [None] + list(range(1, max(1, T - min_steps)))
    best = None
    idx = np.arange(N)
    for k in patiences:
        for tau in taus:
            rule = ExitRule(min_steps=min_steps, patience=k, margin=tau)
            steps = exit_steps(rule, preds, margins)
            hm = _hm(preds[steps - 1, idx], labels, seen)
            if hm < hm_full - max_hm_drop - 1e-9:
                continue
            key = (float(steps.mean()), -hm, -(tau if tau is not None else math.inf),
                   -(k if k is not None else T))
            if best is None or key < best[0]:
                best = (key, rule, steps, hm)
    assert best is not None  # (None, None) never stops early: HM == hm_full
    _, rule, steps, hm = best
    return rule, {"hm_full": hm_full, "hm": hm, "steps_mean": float(steps.mean()),
                  "agreement_with_full": float(np.mean(preds[steps - 1, idx] == preds[-1])), "samples": int(N)}


@torch.no_grad()
def per_step_predictions(model: Any, bench: Any, plan: Any, bias: float, stage: int,
                         splits: Sequence[str], batch: int = 256, records: bool = False) -> tuple:
    """Predictions and margins after every step, ``(T, N)`` each, and labels ``(N,)`` of the
    samples of ``splits``, ranked among stage ``stage``'s classes: the run's torch host drives the
    reference simulator of ``plan`` over all T steps (a step's spikes do not depend on later
    steps, so the prediction after step t is that of a run stopped there). With ``records``, also
    what ran: the payloads sent ``(T, N, n_in)``, every layer's spikes ``(T, N, n_l)`` and the
    thetas ``(T, N, L)`` (None with static thresholds)."""
    from stft_neuro.sim.reference import ReferenceSimulator

    br = model.spiking
    sim = ReferenceSimulator(plan)
    class_emb = model.embed_classes(torch.as_tensor(bench.class_embeddings)).float().numpy()
    seen, unseen = bench.seen(stage), bench.unseen(stage)
    candidates = np.concatenate([seen, unseen])
    preds, margins, labels, xs, sps, ths = [], [], [], [], [], []
    for name in splits:
        sp = bench.splits[name]
        for i in range(0, len(sp.labels), batch):
            a, v, n = (torch.as_tensor(np.asarray(t[i:i + batch])) for t in (sp.audio, sp.visual, sp.lengths))
            host = model.host_part(a, v, n)
            x, g = br.encode(a, v, n)
            rec = br.drive(x, g, sim)
            last = rec.spikes[-1]                                            # (T, B, n_L)
            T = int(last.shape[0])
            step = torch.arange(T)[:, None, None]
            p, m = [], []
            for t in range(T):
                joint = model.readout(host, torch.where(step <= t, last, torch.zeros_like(last)))
                pr, mg = predict_with_margin(joint.float().numpy(), class_emb,
                                             candidates, seen, bias)
                p.append(pr)
                m.append(mg)
            preds.append(np.stack(p))
            margins.append(np.stack(m))
            labels.append(np.asarray(sp.labels[i:i + batch], dtype=np.int64))
            if records:
                xs.append(plan.encode_input(x))
                sps.append(rec.spikes)
                ths.append(rec.theta)
    if not labels:
        raise EarlyExitError(f"early exit: no samples in {', '.join(splits)}")
    out = (np.concatenate(preds, 1), np.concatenate(margins, 1), np.concatenate(labels))
    if not records:
        return out
    spikes = [torch.cat([s[l] for s in sps], 1) for l in range(plan.num_layers)]
    theta = None if ths[0] is None else torch.cat(ths, 1)
    return (*out, torch.cat(xs, 1), spikes, theta)


def validation_predictions(model: Any, bench: Any, plan: Any, bias: float, batch: int = 256
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`per_step_predictions` of the stage-1 validation samples: what the rule is calibrated on."""
    if not any(len(bench.splits[name].labels) for name in VALIDATION_SPLITS):
        raise EarlyExitError("early exit: the benchmark has no stage-1 validation samples to calibrate on")
    return per_step_predictions(model, bench, plan, bias, 1, VALIDATION_SPLITS, batch)


def calibrate(model: Any, bench: Any, plan: Any, bias: float, max_hm_drop: float = DEFAULT_MAX_HM_DROP,
              min_steps: int | None = None) -> ExitRule:
    """The rule of the module doc for ``model`` (its chip running ``plan``), chosen on stage-1
    validation; ``min_steps`` defaults to the number of chip layers + 1."""
    preds, margins, labels = validation_predictions(model, bench, plan, bias)
    if min_steps is None:
        min_steps = min(plan.num_layers + 1, plan.num_steps)
    rule, figures = choose_rule(preds, margins, labels, bench.seen(1), int(min_steps), float(max_hm_drop))
    calibration = {"max_hm_drop": float(max_hm_drop), "splits": list(VALIDATION_SPLITS),
                   "validation": figures, "plan_sha256": plan_digest(plan), "bias": float(bias),
                   "num_steps": int(plan.num_steps)}
    return ExitRule(rule.min_steps, rule.patience, rule.margin, calibration)


# ------------------------------------------------------------------------------------------------
# online: the closed loop's stop rule

@dataclass
class ExitSetup:
    """What a batch's :class:`Judge` needs besides the host (picklable, travels to Ray shards):
    the rule, the class embeddings (C, E), the candidate and seen classes, ``b`` and the plan's T."""

    rule: ExitRule
    class_emb: np.ndarray
    candidates: np.ndarray
    seen: np.ndarray
    bias: float
    num_steps: int

    def judge(self, joint_of: Callable[[Tensor, Tensor], np.ndarray], batch: int) -> "Judge":
        return Judge(self, joint_of, int(self.num_steps), int(batch))


class Judge:
    """The stop rule (``stft_neuro.closed_loop.StopRule``) of one batch of ``batch`` samples.

    ``joint_of(out_spikes (T, B_a, n_L), rows (B_a,))`` is the host's joint embedding (B_a, E) of
    the samples ``rows`` from their last layer's spikes (the steps not run are zeros): the torch
    host's ``joint_from(r[rows], readout(...))``, or the ONNX host's readout graph. ``preds``
    (T, batch) keeps every prediction made (-1: none), ``margins`` likewise (nan)."""

    def __init__(self, setup: ExitSetup, joint_of: Callable[[Tensor, Tensor], np.ndarray],
                 num_steps: int, batch: int) -> None:
        self.setup = setup
        self.joint_of = joint_of
        self.T = num_steps
        self.preds = np.full((num_steps, batch), -1, dtype=np.int64)
        self.margins = np.full((num_steps, batch), np.nan)

    def __call__(self, t: int, out_spikes: Tensor, rows: Tensor) -> Tensor:
        rule = self.setup.rule
        n = int(rows.shape[0])
        if t + 1 < rule.min_steps or rule.never:
            return torch.zeros(n, dtype=torch.bool)
        full = torch.zeros((self.T, *out_spikes.shape[1:]), dtype=out_spikes.dtype)
        full[:t + 1] = out_spikes
        joint = self.joint_of(full, rows)
        s = self.setup
        pred, margin = predict_with_margin(joint, s.class_emb, s.candidates, s.seen, s.bias)
        r = rows.numpy()
        self.preds[t, r] = pred
        self.margins[t, r] = margin
        done = np.zeros(n, dtype=bool)
        if rule.margin is not None:
            done |= margin >= rule.margin
        k = rule.patience
        if k is not None and t - k >= rule.min_steps - 1:
            done |= np.all(self.preds[t - k:t + 1, r] == pred, axis=0)
        return torch.from_numpy(done)


def steps_histogram(steps: Sequence[int]) -> dict[str, int]:
    """``{steps run: samples}`` (JSON keys are strings)."""
    vals, counts = np.unique(np.asarray(steps, dtype=np.int64), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, counts)}
