"""Configuration: frozen dataclasses, loaded from TOML, overridden from the command line.

One :class:`Config` holds five sections (``data``, ``spiking``, ``transformer``, ``fusion``,
``train``). A TOML file sets any subset of keys; ``--set section.key=value`` overrides follow.
Unknown sections or keys, and values of the wrong type, raise :class:`ConfigError` naming the key.
Every run writes its resolved config (``Config.to_dict``) beside its results.

Defaults follow the paper where it says something (Li et al., IEEE TIP 33, 2024; training as in
AVCA), and are sized so that ``make demo`` trains in a few minutes on 2 CPU cores where it does
not.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stft_neuro.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Which benchmark to load or generate.

    ``source``: ``"synthetic"`` (generated here, see ``stft_neuro.data.synthetic``), ``"avca"``
    (h5 features per class) or ``"tcaf"`` (pickled per-class sequences; needs ``allow_pickle``).
    ``root``: for ``avca``/``tcaf`` the dataset folder (e.g. ``.../UCF``); for ``synthetic`` a folder
    laid out like ``shared/data/avgzsl/UCF`` whose real class split and word2vec embeddings to use,
    ``"auto"`` to use ``../shared/data/avgzsl/<dataset>`` (or ``$STFT_NEURO_AVGZSL/<dataset>``) when
    present, or ``"none"`` to generate class names and embeddings too.
    ``sizes`` (synthetic only): ``"small"`` draws ``train_per_class`` / ``eval_per_class`` samples
    of every class (the demo and the tests); ``"real"`` draws exactly the per-class sample counts of
    the real split's per-sample CSV files (``<root>/class-split/main_split/stage_*.csv``, class
    imbalance included; UCF-GZSL: 3,174 / 353 / 1,467 / 4,994 / 555 / 1,267 samples), and needs
    a split root that has them.
    """

    source: str = "synthetic"
    dataset: str = "UCF"
    root: str = "auto"
    allow_pickle: bool = False
    seed: int = 0
    # Synthetic generator (ignored for real data).
    sizes: str = "small"
    train_per_class: int = 24
    eval_per_class: int = 8
    min_seconds: int = 4
    max_seconds: int = 10
    audio_dim: int = 512
    visual_dim: int = 512
    noise: float = 1.25  # per-second feature noise std of the synthetic generator (calibrated, see data/synthetic.py)
    # share of the clip the class event covers, drawn uniformly in [low, high] per sample (synthetic
    # generator; the default is the calibrated benchmark's, bench/bench_event_fraction.py sweeps it)
    event_fraction: tuple[float, ...] = (0.3, 0.6)
    generated_classes: int = 51
    generated_unseen: int = 9
    generated_val_unseen: int = 9


@dataclass(frozen=True)
class SpikingConfig:
    """The spiking branch: host encoding (GLP, TSF, threshold cues) and the chip side (Dense+LIF).

    ``hidden``: LIF layer widths on the chip; ``input_dim``: width of the input currents the host
    sends each step. ``du``, ``dv``: current and voltage decay per step (fractions; Lava's LIF).
    ``threshold``: the LIF threshold in the float model's units. ``surrogate_slope``: slope k of the
    sigmoid surrogate gradient d s/d v = k sig(k x)(1 - sig(k x)). ``input_bits``: graded-spike
    payload of the input currents after quantization. ``netx_compatible``: quantize (deploy mode,
    QAT, export) so that lava-dl's netx HDF5 can carry the network exactly (weight exponent 0/-1,
    bias exponent 6; ``hw_targets/loihi2/quantize.py`` says what it costs); needed for
    ``stft-neuro export --target lava|all``. ``bias``: train a bias per LIF neuron (added to v every
    step); ``false`` keeps every bias at zero (not a trained parameter), which is what NIR consumers
    without a leak potential need: snnTorch's ``import_from_nir`` requires ``v_leak = 0``, so only a
    bias-free plan exports with ``stft-neuro export --nir-profile snntorch``
    (``converters/nir_profiles.py``).
    ``readout_after_latency``: the TSF readout reads the last layer's spikes from step ``L`` on (the
    chip's pipeline delay; ``SpikingBranch.readout_start``); ``false`` reads all T steps (runs
    trained before issue #16). ``head``: the spiking vector gets its own projection into the
    embedding space, trained with the same triplet and projection losses as the audio and visual
    ones (``STFT.spike_proj``), so the chip is taught to carry class information whatever the
    fusion does with it (runs before issue #16: false).
    ``energy_budget_uj``: the chip's energy per sample (uJ, the report's estimate;
    ``SpikingBranch.chip_energy``) that training holds the branch to; 0 turns the term off. The
    trainer adds ``lambda (E / budget - 1)`` to the loss and raises the multiplier ``lambda >= 0`` by
    ``energy_multiplier_lr (E / budget - 1)`` after every batch (dual ascent: it grows while the
    budget is exceeded and decays to 0 when it is met), in float training and in QAT alike.
    ``payload_dead_zone``: host->chip payloads with ``|q| <= k`` are sent as 0 (they cost no
    synaptic operation on Loihi; ``DeploymentPlan.payload_dead_zone``); 0 sends every payload.
    Part of the plan, so QAT trains with it and every backend runs it (BENCHMARKS.md: chip energy
    per sample against k).
    ``input_weight_density``: the fraction of layer 1's weights QAT keeps (the largest ``|w|``;
    the rest are pruned to exactly 0 and held there, ``ChipNetwork.prune_input_weights``); 1 keeps
    all. Layer 1 takes the host's dense graded payloads, so its synaptic events dominate the chip's
    energy and scale with its nonzero fan-out. Applied by QAT (``stft-neuro train --qat``) only.
    ``init``: ``default`` (each weight ~ N(0, (2 vth)^2 / n_in), biases 0) or ``graded``: before
    training, every chip layer's weights and biases are rescaled on training data so that each
    neuron's synaptic drive has standard deviation ``init_drive_std`` and steady mean
    ``init_drive_mean`` (both in thresholds), inside the range where LIF rates are graded
    rather than a saturated sign code (``ChipNetwork.graded_init`` says why).
    ``saliency``: 0 (off), 1 or 2 heads of **spike-driven temporal pooling** (issue #16;
    ``model/saliency.py``): the host bins the features into ``num_steps - L`` steps and sends L
    zero steps after them (the chip's pipeline delay), and per head a softmax over the steps of a
    linear score of the last layer's spikes weights the host's per-step features: one head pools
    audio and visual alike, two pool each modality with its own weights (the generator's visual
    event may be shifted by a second from the audio one). The pooled features join the readout
    (``STFT.readout``). The chip then decides *when* the sample's evidence is; the host reads
    *what* it is.
    """

    enabled: bool = True
    num_steps: int = 10
    input_dim: int = 512
    hidden: tuple[int, ...] = (256, 256, 128)
    du: float = 0.25
    dv: float = 0.1
    threshold: float = 1.0
    surrogate_slope: float = 5.0
    glp: bool = True
    tsf: bool = True
    dynamic_threshold: bool = True
    input_bits: int = 8
    netx_compatible: bool = False
    bias: bool = True
    readout_after_latency: bool = False
    head: bool = False
    energy_budget_uj: float = 0.0
    energy_multiplier_lr: float = 0.05
    payload_dead_zone: int = 0
    input_weight_density: float = 1.0
    init: str = "default"
    init_drive_std: float = 0.1
    init_drive_mean: float = 0.1
    saliency: int = 0


@dataclass(frozen=True)
class TransformerConfig:
    """Latent semantic reasoning transformer: latent knowledge slots with gating, self-attention,
    cross-modal attention between audio and visual."""

    dim: int = 256
    heads: int = 4
    layers: int = 1
    num_latents: int = 8
    dropout: float = 0.1


@dataclass(frozen=True)
class FusionConfig:
    """Temporal-semantic Tucker fusion. ``kind``: ``"tucker"`` or ``"concat"`` (ablation).
    ``ranks``: one Tucker fusion per rank (multi-scale), summed. ``width``: internal width;
    ``embed_dim``: the joint embedding compared with projected class embeddings.
    ``text_projection``, ``word_geometry``, ``skip``: ``"auto"`` (the default) takes the value of
    the benchmark size's recipe (``RECIPES``: ``data.sizes=real`` selects the real-size recipe).
    ``text_projection``: how word2vec (300-d) maps to that space: ``"mlp"`` (AVCA's, 300 -> width ->
    embed_dim) or ``"linear"`` (one linear map). The real-size recipe uses ``linear``, which
    generalises better to unseen classes at real size; the small recipe keeps ``mlp`` because the
    linear map stalls on a plateau with 24 training samples per class (measurements:
    BENCHMARKS.md, "Model quality, real-size synthetic UCF (issue #11)").
    ``output_norm``: LayerNorm the fusion's output before it joins the skip path ``W r``, so that
    the two enter the joint embedding at the same scale (without it a trained fusion's output can
    be far smaller than the skip's; same section of BENCHMARKS.md).
    ``word_geometry``: the class word table the model sees (``model/word_geometry.py``: ``raw``,
    ``centred``, ``centred_unit``). ``skip``: the linear paths beside the fusion into the joint
    embedding (``STFT.joint_from``): ``transformer`` (``W r``), ``spiking`` (``W s``) or ``both``.
    ``readout``: ``"trained"`` (the joint projection is trained with the losses, as in the paper) or
    ``"ridge"``: after training, the last linear map is refitted in closed form (ridge regression,
    ``model/ridge_readout.py``) from the readout's features (the fusion's pre-projection vector and,
    with ``spiking.saliency``, the spike-pooled features) to the class word table, the ridge family
    member (word geometry, intercept, lambda) chosen on stage-1 validation at every epoch (issue #16:
    at real size the trained projections overfit the seen classes, a closed-form map does not).
    ``transformer_dropout``: in training, the probability that a sample's transformer vector ``r``
    is zeroed before the readout (modality dropout; ``STFT.forward``), so that the joint embedding
    must also be predictable from the spiking branch alone and the branch is trained to carry the
    class; 0 turns it off. Evaluation always uses ``r``."""

    kind: str = "tucker"
    ranks: tuple[int, ...] = (16, 32)
    width: int = 256
    embed_dim: int = 64
    dropout: float = 0.1
    text_projection: str = "auto"
    output_norm: bool = False
    word_geometry: str = "auto"
    skip: str = "auto"
    transformer_dropout: float = 0.0
    readout: str = "trained"


@dataclass(frozen=True)
class TrainConfig:
    """Training as in AVCA (Adam, weight decay, ReduceLROnPlateau), sized for 2 CPU cores.

    ``lr`` is 3e-4, not AVCA's 1e-3: at 1e-3 (no warm-up) the attention layers do not train on the
    synthetic benchmark (loss stays at log C), at 3e-4 they do.
    ``weight_decay``: Adam's (coupled) L2 on the host's parameters. ``spiking_weight_decay``: the
    same for the spiking branch's parameters (its host encoder, GLP, cues, TSF, the chip's weights
    and the readout's ``skip_spiking``; ``Trainer.parameter_groups``). They are separate because
    Adam's coupled L2 normalises the decay's gradient like any other: a parameter whose task
    gradient is small moves towards zero by about ``lr`` per step whatever its size, so a branch the
    loss uses weakly is erased (at weight decay 1e-3, 3 of the 5 real-size runs of issue #16
    ended with the chip's encoder below 5e-4 and the chip silent, the other two nearly so), while the host's well-used weights are only
    regularised.
    ``threads``: torch intra-op threads for training (``torch.set_num_threads``); 0 leaves torch's
    default (one per core). Measured on 2 cores (AMD EPYC, full STFT, batch 64, real-size UCF):
    alone on the machine 2 threads gave 443 samples/s against 300 with 1; beside other busy
    processes (bench/bench_quality_throughput.py, 3 rounds) 2 threads gave 23 samples/s against 289
    with 1, from oversubscription. So the default stays torch's (the demo, on an idle machine) and
    background sweeps set 1 (bench/bench_quality.py does).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = -1.0  # -1: the benchmark size's recipe (RECIPES)
    spiking_weight_decay: float = -1.0  # -1: the benchmark size's recipe (RECIPES)
    plateau_patience: int = 3
    margin: float = 1.0
    seed: int = 0
    device: str = "auto"
    stages: str = "both"
    threads: int = 0


#: The recipe's choices that differ between benchmark sizes, by ``section.key``: a key left at its
#: "auto" value (``"auto"``; ``-1`` for ``train.weight_decay``) resolves to these, and
#: ``recipe_name`` says which applies. Why they differ (issue #16, BENCHMARKS.md):
#: - ``real`` (``data.sizes=real``, or real features): the linear text projection (+4.3 HM over
#:   AVCA's MLP, issue #11), the centred unit-normalised word table, skip paths from both the
#:   transformer and the spiking branch, and weight decay 1e-3 (Adam's L2; validation HM +4.2 and
#:   +2.7 on seeds 0 and 2 over 1e-5; 3e-3 and 1e-2 lower), each chosen on stage-1 validation of
#:   real-size synthetic UCF;
#: - ``small`` (the demo and the tests: 24 training samples per class): the linear projection
#:   stalls on a plateau there (BENCHMARKS.md, issue #11), so AVCA's MLP, the raw table, the
#:   transformer skip and weight decay 1e-5, the recipe the demo's figures were measured with.
RECIPES: dict[str, dict[str, Any]] = {
    "real": {"fusion.text_projection": "linear", "fusion.word_geometry": "centred_unit",
             "fusion.skip": "both", "train.weight_decay": 1e-3, "train.spiking_weight_decay": 1e-3},
    "small": {"fusion.text_projection": "mlp", "fusion.word_geometry": "raw",
              "fusion.skip": "transformer", "train.weight_decay": 1e-5,
              "train.spiking_weight_decay": 1e-5},
}
#: The chip of each recipe: a fresh config (:func:`load` without ``base``) whose recipe is ``real``
#: takes these keys unless its TOML file or an override names them. Why (issue #16, BENCHMARKS.md
#: "The chip as a saliency detector"): at real size the chip read as a class code never carried
#: the prediction (shuffling its output cost 0.0 HM) and the STFT lost to the ridge baseline; the
#: same kind of chip deciding which seconds the host pools (``model/saliency.py``), with the last
#: map fitted in closed form (``model/ridge_readout.py``), won on stage-1 validation on every seed
#: tried (BENCHMARKS.md). One LIF layer of 128 neurons answers one step after each bin (T = 10 bins
#: + 1 drain step); du = dv = 0.5 keep its answer to a bin from smearing into the next ones; the
#: graded initialisation puts it where its rates are graded; static thresholds (not tried with
#: the dynamic cue); the recipe's weight decay 1e-3 (1e-4 for the chip scored the same on seed 0's
#: validation: the chip the loss needs is not erased). The small (demo) recipe keeps the paper's
#: chip (``SpikingConfig``'s defaults: three layers read as a class code), on which the demo's
#: figures were measured.
#: Both recipes deploy their chip sparse (issue #17, ``DEPLOY_ONLY`` keys: float training ignores
#: them; QAT, export and every backend run them): host payloads ``|q| <= k`` are not sent and QAT
#: prunes layer 1 to a fraction of its weights, because layer 1's synaptic events (nonzero
#: payloads x nonzero fan-out) are most of the chip's energy. Real size: k = 32 and 10 % of the
#: weights took the saliency chip from 3.05x the same branch as an ANN on the host to 0.20x at
#: HM +0.14 [-0.48, +0.77] against QAT without them, 5 seeds (BENCHMARKS.md "Energy that pays at real
#: size"; the grid was chosen on a stage-1 validation probe, and the pair is the cheapest of the
#: grid without an energy budget, the budget having cost HM on some seeds). Small (demo) size:
#: k = 64 and 25 % of layer 1 took the paper's chip from 3.6x the ANN to 0.69x, HM -0.1 [-6.9, +6.7]
#: (3 seeds; at this size the branch carries nothing, so HM moves by noise).
#: These are not "auto" values like ``RECIPES``: a ``SpikingConfig()`` built directly (the
#: full-size Lava equivalence tests) stays the paper's chip, and a stored run's config names
#: every key.
RECIPE_CHIPS: dict[str, dict[str, Any]] = {
    "real": {"spiking.saliency": 2, "fusion.readout": "ridge", "spiking.hidden": (128,),
             "spiking.num_steps": 11, "spiking.du": 0.5, "spiking.dv": 0.5, "spiking.init": "graded",
             "spiking.dynamic_threshold": False,
             "spiking.payload_dead_zone": 32, "spiking.input_weight_density": 0.1},
    "small": {"spiking.payload_dead_zone": 64, "spiking.input_weight_density": 0.25},
}
#: ``section.key`` that act only on the deployed chip (deploy mode, QAT, export): the payload dead
#: zone and layer 1's pruning. A float run trains and tests the same whatever they hold (with an
#: energy budget, the float-mode estimate also leaves out the dead zone's payloads).
DEPLOY_ONLY = frozenset({"spiking.payload_dead_zone", "spiking.input_weight_density"})
#: the value that means "take the recipe's" (default "auto")
AUTO_VALUES: dict[str, Any] = {"train.weight_decay": -1.0, "train.spiking_weight_decay": -1.0}


def _auto(key: str) -> Any:
    return AUTO_VALUES.get(key, "auto")


def recipe_name(data: DataConfig) -> str:
    """``"real"`` for real-size synthetic data or real features, else ``"small"``."""
    return "real" if data.sizes == "real" or data.source != "synthetic" else "small"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    spiking: SpikingConfig = field(default_factory=SpikingConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # Resolve the keys left at their "auto" value for the benchmark's size (RECIPES): every Config,
        # however built, holds concrete values, and a run's config.json records them.
        # ``auto_keys`` remembers them, so that ``from_dict`` re-resolves them when an override
        # changes the data section on top of a resolved base.
        recipe = RECIPES[recipe_name(self.data)]
        auto = [k for k in recipe if getattr(getattr(self, k.split(".")[0]), k.split(".")[1]) == _auto(k)]
        for section in {k.split(".")[0] for k in auto}:
            values = {k.split(".")[1]: recipe[k] for k in auto if k.startswith(section + ".")}
            object.__setattr__(self, section, dataclasses.replace(getattr(self, section), **values))
        object.__setattr__(self, "auto_keys", frozenset(auto))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config)}  # type: ignore[misc]
_SECTION_TYPES = {name: typing.get_type_hints(Config)[name] for name in SECTIONS}


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """Check/convert one value to the field's type; raise ConfigError naming ``where``."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            kind = "numbers" if typing.get_args(hint)[0] is float else "integers"
            raise ConfigError(f"config {where}: expected a list of {kind}, got {value!r}")
        return tuple(_coerce(where, v, typing.get_args(hint)[0]) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config {where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"config {where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, str):
                value = value.strip()
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config {where}: expected an integer, got {value!r}") from None
        if isinstance(value, float) and value != number:
            raise ConfigError(f"config {where}: expected an integer, got {value!r}")
        return number
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"config {where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config {where}: expected a number, got {value!r}") from None
    if hint is str:
        return str(value)
    raise ConfigError(f"config {where}: unsupported type {hint}")  # pragma: no cover


def from_dict(raw: dict[str, Any], base: Config | None = None) -> Config:
    """Build a Config from nested ``{section: {key: value}}``, on top of ``base`` (defaults)."""
    base = base or Config()
    sections = {}
    for name in SECTIONS:
        sections[name] = getattr(base, name)
    # keys the base took from its recipe go back to "auto" unless set here (Config.__post_init__)
    for key in getattr(base, "auto_keys", ()):
        section, name = key.split(".")
        if name not in raw.get(section, {}):
            sections[section] = dataclasses.replace(sections[section], **{name: _auto(key)})
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"config: unknown section {name!r} (sections: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"config: section {name!r} must be a table of keys")
        cls = _SECTION_TYPES[name]
        hints = typing.get_type_hints(cls)
        updates = {}
        for key, value in values.items():
            if key not in hints:
                known = ", ".join(hints)
                raise ConfigError(f"config: unknown key {name}.{key} (keys of [{name}]: {known})")
            updates[key] = _coerce(f"{name}.{key}", value, hints[key])
        sections[name] = dataclasses.replace(sections[name], **updates)
    cfg = Config(**sections)
    validate(cfg)
    return cfg


#: Keys added after runs were first written, with the value that reproduces those older runs.
#: ``from_run_dict`` fills them in when a stored config.json lacks them (a run folder records the
#: config it trained with; the defaults may have moved since).
LEGACY_VALUES: dict[str, dict[str, Any]] = {
    "spiking": {"readout_after_latency": False, "head": False, "init": "default", "saliency": 0},
    "fusion": {"word_geometry": "raw", "skip": "transformer", "transformer_dropout": 0.0, "readout": "trained"},
}


def from_run_dict(raw: dict[str, Any]) -> Config:
    """The Config of a stored run (its config.json): ``from_dict`` with ``LEGACY_VALUES`` for the
    keys the run predates."""
    filled = {name: dict(values) if isinstance(values, dict) else values for name, values in raw.items()}
    for section, legacy in LEGACY_VALUES.items():
        if isinstance(filled.get(section), dict):
            for key, value in legacy.items():
                filled[section].setdefault(key, value)
    train = filled.get("train")
    if isinstance(train, dict) and "weight_decay" in train:
        # runs before the split decayed every parameter alike
        train.setdefault("spiking_weight_decay", train["weight_decay"])
    return from_dict(filled)


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """``["train.epochs=3", "spiking.hidden=128,64"]`` -> nested dict (values stay strings)."""
    raw: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.epochs=5")
        raw.setdefault(section, {})[name] = value
    return raw


def load(path: str | Path | None = None, overrides: list[str] | None = None,
         base: Config | None = None) -> Config:
    """Defaults (or ``base``), then the TOML file ``path`` (if given), then ``overrides``; without
    ``base``, then the recipe's chip (``RECIPE_CHIPS``) for every key of it that neither names."""
    cfg = base or Config()
    named: set[str] = set()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p}: not valid TOML ({exc})") from None
        cfg = from_dict(raw, cfg)
        named |= {f"{s}.{k}" for s, values in raw.items() if isinstance(values, dict) for k in values}
    if overrides:
        parsed = parse_overrides(overrides)
        cfg = from_dict(parsed, cfg)
        named |= {f"{s}.{k}" for s, values in parsed.items() for k in values}
    if base is None:
        chip: dict[str, dict[str, Any]] = {}
        for key, value in RECIPE_CHIPS[recipe_name(cfg.data)].items():
            if key not in named:
                section, name = key.split(".")
                chip.setdefault(section, {})[name] = value
        if chip:
            cfg = from_dict(chip, cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express; raise ConfigError naming the key."""
    checks = [
        (cfg.data.source in ("synthetic", "avca", "tcaf"), "data.source must be synthetic, avca or tcaf"),
        (cfg.data.sizes in ("small", "real"), "data.sizes must be small or real"),
        (cfg.data.min_seconds >= 1, "data.min_seconds must be >= 1"),
        (cfg.data.max_seconds >= cfg.data.min_seconds, "data.max_seconds must be >= data.min_seconds"),
        (cfg.data.train_per_class >= 1 and cfg.data.eval_per_class >= 1,
         "data.train_per_class and data.eval_per_class must be >= 1"),
        (cfg.data.noise >= 0, "data.noise must be >= 0"),
        (len(cfg.data.event_fraction) == 2 and 0 < cfg.data.event_fraction[0] <= cfg.data.event_fraction[1] <= 1,
         "data.event_fraction must be two numbers low,high with 0 < low <= high <= 1"),
        (cfg.spiking.num_steps >= 1, "spiking.num_steps must be >= 1"),
        (cfg.spiking.init in ("default", "graded"), "spiking.init must be default or graded"),
        (cfg.spiking.init_drive_std > 0, "spiking.init_drive_std must be > 0 (thresholds)"),
        (not cfg.spiking.readout_after_latency or cfg.spiking.num_steps > len(cfg.spiking.hidden),
         "spiking.num_steps must exceed the number of chip layers (spiking.hidden) when "
         "spiking.readout_after_latency is true: the last layer's first spikes arrive at step L"),
        (len(cfg.spiking.hidden) >= 1 and min(cfg.spiking.hidden) >= 1,
         "spiking.hidden must list at least one positive width"),
        (0.0 <= cfg.spiking.du <= 1.0 and 0.0 <= cfg.spiking.dv <= 1.0,
         "spiking.du and spiking.dv must lie in [0, 1]"),
        (cfg.spiking.threshold > 0, "spiking.threshold must be > 0"),
        (cfg.spiking.energy_budget_uj >= 0, "spiking.energy_budget_uj must be >= 0 (0: no energy term)"),
        (cfg.spiking.energy_multiplier_lr > 0, "spiking.energy_multiplier_lr must be > 0"),
        (0 <= cfg.spiking.payload_dead_zone < 2 ** (cfg.spiking.input_bits - 1) - 1,
         "spiking.payload_dead_zone must lie in 0 .. 2^(input_bits-1) - 2 (payload units)"),
        (0.0 < cfg.spiking.input_weight_density <= 1.0,
         "spiking.input_weight_density must lie in (0, 1] (the fraction of layer 1's weights kept)"),
        (2 <= cfg.spiking.input_bits <= 8, "spiking.input_bits must lie in 2..8 (signed graded payload)"),
        (cfg.transformer.dim % cfg.transformer.heads == 0, "transformer.dim must be a multiple of transformer.heads"),
        (cfg.fusion.kind in ("tucker", "concat"), "fusion.kind must be tucker or concat"),
        (cfg.fusion.text_projection in ("mlp", "linear"), "fusion.text_projection must be mlp or linear"),
        (cfg.fusion.word_geometry in ("raw", "centred", "centred_unit"),
         "fusion.word_geometry must be raw, centred or centred_unit"),
        (cfg.spiking.saliency in (0, 1, 2), "spiking.saliency must be 0 (off), 1 or 2 heads"),
        (not cfg.spiking.saliency or cfg.spiking.num_steps > len(cfg.spiking.hidden),
         "spiking.num_steps must exceed the number of chip layers (spiking.hidden) with "
         "spiking.saliency: the host sends num_steps - L binned steps, then L zero steps"),
        (cfg.fusion.readout in ("trained", "ridge"), "fusion.readout must be trained or ridge"),
        (cfg.fusion.skip in ("transformer", "spiking", "both"),
         "fusion.skip must be transformer, spiking or both"),
        (len(cfg.fusion.ranks) >= 1 and min(cfg.fusion.ranks) >= 1, "fusion.ranks must list positive ranks"),
        (cfg.train.epochs >= 1, "train.epochs must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.threads >= 0, "train.threads must be >= 0 (0: torch's default)"),
        (cfg.train.lr > 0, "train.lr must be > 0"),
        (cfg.train.weight_decay >= 0, "train.weight_decay must be >= 0 (-1: the recipe's)"),
        (cfg.train.spiking_weight_decay >= 0, "train.spiking_weight_decay must be >= 0 (-1: the recipe's)"),
        (0.0 <= cfg.fusion.transformer_dropout < 1.0, "fusion.transformer_dropout must be in [0, 1)"),
        (cfg.train.stages in ("both", "1", "2"), "train.stages must be both, 1 or 2"),
        (cfg.train.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"config: {message}")
