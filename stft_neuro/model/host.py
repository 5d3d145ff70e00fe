"""The host side of the spiking branch: GLP encoding, threshold cues and TSF readout.

Everything here runs on the host (GPU or CPU) and talks to the chip side only through the step
contract (``stft_neuro.contract``): at each step the host sends input currents ``x_t`` and a
threshold modulation ``theta_t``, and receives every layer's spikes.

Shapes: B batch, S seconds (padded), D = Da + Dv feature width, T steps, L chip layers.

- **GLP** (global-local pooling), per modality and feature over the valid seconds:
  ``P = 1/2 (P_max + P_avg) + b P_max + (1 - b) P_avg`` with a learnable scalar ``b`` per modality
  (initialised at 0.5). It shapes the input currents: ``I'_t = (1 + sigmoid(P)) * I_t``.
- **Input currents**: the per-second features are averaged into T equal bins of each sample's own
  length (a sample shorter than T seconds repeats seconds), shaped by GLP, and mapped by a host
  linear encoder to the chip's input width. (Paper silent: binning and encoder are our choice.)
  With ``spiking.saliency`` the features go into ``T - L`` bins and the last L steps carry zero
  currents, so that the last layer's response to every bin is read (``model/saliency.py``).
- **Dynamic threshold cues**: the threshold of layer l at step t+1 rises with the information of
  layer l's own output at step t and with the GLP cue,
  ``theta_{t+1,l} = vth * (softplus(a_l) H(p_{t,l}) + softplus(c_l) g)``, where ``p`` is the layer's
  firing fraction, ``H`` the binary entropy in bits, and ``g = mean(sigmoid(P)) - 1/2`` per sample.
  Only layer l's own spikes are used, so the cue needs no information from deeper layers.
- **Integer backends** (the torch chip in deploy mode, ``set_deploy(True)``; the reference simulator;
  Lava): the host sends what the backend's deployment plan takes, converted by that plan and
  nothing else (``backend.plan``, read after ``backend.reset``): input currents become
  ``input_bits`` graded payloads (``plan.encode_input``: ``round(x / input_scale)``, saturating;
  ``input_scale`` calibrated on data by ``calibrate_input``), threshold cues become integer mantissa
  offsets (``plan.theta_to_chip``), clamped so that ``vth + theta`` stays within Loihi's unsigned
  17-bit threshold. Both round with straight-through gradients. A float backend (``plan`` None)
  gets the float currents and cues unchanged.
- **TSF** (time-step factors): ``out = sum_t softmax_t(w . s_L[t] + beta_t) s_L[t]`` instead of the
  plain mean over T (ablation: ``tsf = False``), over the steps ``t >= L`` at which the last layer
  can have spiked (``readout_start``; all steps with ``spiking.readout_after_latency = false``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stft_neuro.config import SpikingConfig
from stft_neuro.closed_loop import SpikeRecord, closed_loop
from stft_neuro.contract import SpikingBackend
from stft_neuro.hw_targets.loihi2 import quantize
from stft_neuro.hw_targets.loihi2.energy import ChipEnergy, chip_energy_of_record, chip_weights
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.model.saliency import SaliencyPool
from stft_neuro.model.spiking import ChipNetwork


def valid_mask(lengths: Tensor, seconds: int) -> Tensor:
    """(B,) lengths -> (B, S) bool, True on valid seconds."""
    return torch.arange(seconds, device=lengths.device)[None, :] < lengths[:, None]


def masked_max_mean(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Max and mean of ``x`` (B, S, D) over valid seconds ``mask`` (B, S) -> two (B, D)."""
    m = mask[..., None].to(x.dtype)
    mean = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
    mx = x.masked_fill(~mask[..., None], float("-inf")).amax(1)
    return mx, mean


def bin_matrix(lengths: Tensor, seconds: int, steps: int) -> Tensor:
    """(B, T, S) averaging matrix: row t averages the seconds of bin t of each sample's length.

    Bin t covers seconds ``[floor(t L / T), max(floor(t L / T) + 1, floor((t+1) L / T)))``.
    """
    t = torch.arange(steps, device=lengths.device, dtype=torch.float64)
    L = lengths.to(torch.float64)[:, None]
    start = torch.floor(t[None] * L / steps)
    stop = torch.maximum(start + 1, torch.floor((t[None] + 1) * L / steps))
    s = torch.arange(seconds, device=lengths.device, dtype=torch.float64)
    inside = (s[None, None] >= start[..., None]) & (s[None, None] < stop[..., None])
    w = inside.to(torch.float32)
    return w / w.sum(-1, keepdim=True)


class GLP(nn.Module):
    """Global-local pooling of one modality: (B, S, D), mask -> P (B, D)."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        p_max, p_avg = masked_max_mean(x, mask)
        return 0.5 * (p_max + p_avg) + self.b * p_max + (1.0 - self.b) * p_avg


def binary_entropy_bits(p: Tensor) -> Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


class SpikingBranch(nn.Module):
    """Host encoding + chip network + TSF readout: features -> temporal vector (B, n_L)."""

    def __init__(self, audio_dim: int, visual_dim: int, cfg: SpikingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = audio_dim + visual_dim
        self.audio_dim = audio_dim
        self.norm = nn.LayerNorm(d)
        self.glp_audio = GLP() if cfg.glp else None
        self.glp_visual = GLP() if cfg.glp else None
        self.encoder = nn.Linear(d, cfg.input_dim)
        self.chip = ChipNetwork((cfg.input_dim, *cfg.hidden), cfg.du, cfg.dv, cfg.threshold,
                                cfg.surrogate_slope, cfg.input_bits, cfg.num_steps,
                                netx_compatible=cfg.netx_compatible, bias=cfg.bias)
        self.chip.payload_dead_zone = cfg.payload_dead_zone
        n_layers = len(cfg.hidden)
        if cfg.dynamic_threshold:
            self.cue_info = nn.Parameter(torch.full((n_layers,), -1.0))
            self.cue_glp = nn.Parameter(torch.full((n_layers,), -1.0))
        if cfg.tsf:
            self.tsf_score = nn.Linear(cfg.hidden[-1], 1)
            self.tsf_step_bias = nn.Parameter(torch.zeros(cfg.num_steps))
        self.saliency = (SaliencyPool(cfg.hidden[-1], cfg.saliency, self.bins, n_layers, audio_dim)
                         if cfg.saliency else None)

    @property
    def bins(self) -> int:
        """Binned feature steps the host sends: ``num_steps``, or ``num_steps - L`` with
        ``spiking.saliency`` (then L zero steps follow, the chip's pipeline delay)."""
        return self.cfg.num_steps - (len(self.cfg.hidden) if self.cfg.saliency else 0)

    def binned_features(self, audio: Tensor, visual: Tensor, lengths: Tensor) -> Tensor:
        """Raw audio + visual features averaged into ``bins`` bins of each sample's length:
        ``(B, bins, Da + Dv)`` (what ``spiking.saliency`` pools)."""
        bins = bin_matrix(lengths, audio.shape[1], self.bins)
        return bins @ torch.cat([audio, visual], dim=-1)

    @property
    def out_dim(self) -> int:
        return self.cfg.hidden[-1]

    @property
    def deploy(self) -> bool:
        return self.chip.mode == "deploy"

    def set_deploy(self, on: bool) -> None:
        """Switch the chip side to Loihi 2 fixed-point arithmetic (QAT / deployment) or back."""
        self.chip.set_mode("deploy" if on else "float")

    def deployment_plan(self) -> tuple[DeploymentPlan, quantize.QuantizationReport]:
        """The frozen plan of the chip side's current parameters (for the reference simulator,
        Lava and export) and the quantization report. Needs ``calibrate_input`` first."""
        return self.chip.deployment_plan()

    @torch.no_grad()
    def calibrate_input(self, audio: Tensor, visual: Tensor, lengths: Tensor,
                        percentile: float = 99.9) -> float:
        """Set the input payload scale from data: the ``percentile`` of |input current| maps to
        the largest ``input_bits`` payload (larger currents saturate). Returns the scale."""
        x = self.encode(audio, visual, lengths)[0]
        ref = float(torch.quantile(x.abs().flatten().float()[:2_000_000], percentile / 100.0))
        self.chip.input_scale.fill_(quantize.input_scale_for(ref, self.cfg.input_bits))
        return float(self.chip.input_scale)

    def encode(self, audio: Tensor, visual: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """-> input currents x (T, B, input_dim) (float) and the GLP cue g (B,) (zeros without GLP).

        The currents are converted to a backend's units by ``drive``, with the backend's plan."""
        seconds = audio.shape[1]
        mask = valid_mask(lengths, seconds)
        feats = self.norm(torch.cat([audio, visual], dim=-1))  # (B, S, D)
        binned = bin_matrix(lengths, seconds, self.bins) @ feats  # (B, bins, D)
        if self.glp_audio is not None:
            da = self.audio_dim
            p = torch.cat([self.glp_audio(feats[..., :da], mask),
                           self.glp_visual(feats[..., da:], mask)], dim=-1)  # (B, D)
            gate = torch.sigmoid(p)
            binned = binned * (1.0 + gate[:, None, :])
            g = gate.mean(-1) - 0.5
        else:
            g = feats.new_zeros(feats.shape[0])
        x = self.encoder(binned).transpose(0, 1)  # (bins, B, input_dim)
        if self.bins < self.cfg.num_steps:  # spiking.saliency: zero currents while the chip drains
            x = torch.cat([x, x.new_zeros(self.cfg.num_steps - self.bins, *x.shape[1:])])
        return x.contiguous(), g

    def threshold_cue(self, spikes_t: tuple[Tensor, ...], g: Tensor) -> Tensor:
        """Threshold modulation for the next step from this step's spikes: (B, L), threshold units."""
        rates = torch.stack([s.mean(-1) for s in spikes_t], dim=-1)  # (B, L)
        info = binary_entropy_bits(rates)
        theta = F.softplus(self.cue_info) * info + F.softplus(self.cue_glp) * g[:, None]
        return self.cfg.threshold * theta

    def initial_cue(self, g: Tensor) -> Tensor:
        """Threshold modulation at step 0 (no output yet, so only the GLP cue): (B, L), threshold units."""
        return self.cfg.threshold * F.softplus(self.cue_glp) * g[:, None]

    # -- the host's side of the closed loop (stft_neuro.closed_loop.LoopHost) ---------------------
    @property
    def dynamic_threshold(self) -> bool:
        return bool(self.cfg.dynamic_threshold)

    def chip_input(self, x: Tensor, plan: DeploymentPlan | None) -> Tensor:
        """Float currents (T, B, input_dim) -> what is sent: ``plan.encode_input`` payloads (plan
        None: the currents unchanged)."""
        return x if plan is None else plan.encode_input(x)

    def chip_theta0(self, g: Tensor, plan: DeploymentPlan | None) -> Tensor:
        """:meth:`initial_cue` in the backend's units (``plan.theta_to_chip``): (B, L)."""
        cue = self.initial_cue(g)
        return cue if plan is None else plan.theta_to_chip(cue)

    def chip_theta(self, spikes_t: tuple[Tensor, ...], g: Tensor, plan: DeploymentPlan | None) -> Tensor:
        """:meth:`threshold_cue` in the backend's units (``plan.theta_to_chip``): (B, L)."""
        cue = self.threshold_cue(spikes_t, g)
        return cue if plan is None else plan.theta_to_chip(cue)

    def drive(self, x: Tensor, g: Tensor, backend: SpikingBackend) -> SpikeRecord:
        """Run the chip through the step contract: :func:`~stft_neuro.closed_loop.closed_loop` with
        this branch as the host (closed loop when thresholds are dynamic).

        ``x`` (T, B, input_dim) float currents. The host converts them, and every threshold cue,
        with ``backend.plan`` (None: float units), the plan the backend itself runs."""
        return closed_loop(self, backend, x, g)

    @property
    def readout_start(self) -> int:
        """First step the readout uses: ``L`` (the number of chip layers) with
        ``spiking.readout_after_latency``, else 0. Each Dense adds one step of delay, so the last
        layer cannot spike before step ``L``: steps ``0..L-1`` of its output are zeros for every
        sample. Read over all steps, TSF learnt to put 76 % of its weight on those three empty
        steps (real-size UCF, seed 0), shrinking the branch's output to a near-constant."""
        return len(self.cfg.hidden) if self.cfg.readout_after_latency else 0

    def chip_energy(self, record: SpikeRecord) -> ChipEnergy:
        """The chip's energy per sample for one driven batch (an estimate, with gradients;
        ``hw_targets/loihi2/energy.py``): the report's per-operation model and definitions.

        Deploy mode (QAT): the payloads sent, the plan's Lava-effective weights (straight-through
        to the float weights), the integer spikes and the exact active-update replay: the value is
        what the report counts on the deployed run. Float mode (no plan yet): the float currents
        as payloads of a scale calibrated on this batch (``quantize.input_scale_for`` of the
        99.9th percentile, as ``calibrate_input`` does; rounded, straight-through; those within
        the plan's payload dead zone not sent), the float
        weights (every weight a synapse), every neuron update counted active (an upper bound):
        an approximation of the deployed value that trains the same levers (spike counts and
        zero payloads)."""
        if self.deploy:
            plan, report = self.chip.deployment_plan()
            weights = chip_weights(plan, report, list(self.chip.weights))
            return chip_energy_of_record(record, record.sent, weights, plan=plan,
                                         payload_dead_zone=int(plan.payload_dead_zone))
        x = record.sent
        ref = float(torch.quantile(x.detach().abs().flatten().float()[:2_000_000], 0.999))
        p = x / quantize.input_scale_for(ref, self.cfg.input_bits)
        p = p + (p.round() - p).detach()
        k = float(self.chip.payload_dead_zone)
        if k:  # the plan's dead zone: payloads |p| <= k are not sent
            p = p * (p.detach().abs() > k).to(p.dtype)
        return chip_energy_of_record(record, p, list(self.chip.weights), active_updates="all",
                                     payload_dead_zone=int(k))

    def readout(self, out_spikes: Tensor) -> Tensor:
        """TSF (or mean) over steps ``readout_start..T-1`` of the last layer's spikes (T, B, n_L) ->
        (B, n_L)."""
        t0 = self.readout_start
        out_spikes = out_spikes[t0:]
        if not self.cfg.tsf:
            return out_spikes.mean(0)
        scores = self.tsf_score(out_spikes).squeeze(-1) + self.tsf_step_bias[t0:, None]  # (T - t0, B)
        weights = torch.softmax(scores, dim=0)
        return (weights[..., None] * out_spikes).sum(0)

    def forward(self, audio: Tensor, visual: Tensor, lengths: Tensor,
                backend: SpikingBackend | None = None) -> tuple[Tensor, SpikeRecord]:
        x, g = self.encode(audio, visual, lengths)
        record = self.drive(x, g, backend if backend is not None else self.chip)
        return self.readout(record.spikes[-1]), record
