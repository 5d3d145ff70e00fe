"""The chip side of the spiking branch: Dense synapses and LIF neurons, one step at a time.

This module is exactly what a neuromorphic backend takes over: it implements the step contract of
``stft_neuro.contract`` (``reset`` / ``step`` / ``run``), and holds nothing that belongs to the
host (GLP, TSF and threshold cues live in ``host.py``).

Neuron model: Lava's LIF (``lava.proc.lif``), current-based, hard reset to zero::

    u[t] = u[t-1] * (1 - du) + a[t]            # a[t] = W @ s_prev[t-1]: the Dense output, one step late
    v[t] = v[t-1] * (1 - dv) + u[t] + bias
    s[t] = v[t] > vth + theta[t]               # theta: threshold modulation sent by the host
    v[t] = 0 where s[t]

Every Dense adds one step of delay, as in Lava: the LIF of layer ``l`` at step ``t`` integrates the
spikes that layer ``l-1`` emitted at ``t-1`` (layer 0 integrates the host's input of ``t-1``).
Choices where the paper is silent: the spike's surrogate gradient is the sigmoid derivative with
slope k (``SpikingConfig.surrogate_slope``); the reset is detached from the graph (as in snnTorch's
default), so gradients flow through the membrane, not through the reset.

Two arithmetic modes share this structure (``ChipNetwork.mode``):

- ``"float"``: the equations above in float32 (Lava's ``floating_pt`` LIF); ``x_t`` are input
  currents and ``theta_t`` is in threshold units.
- ``"deploy"``: exactly what Lava's ``fixed_pt`` Dense and LIF compute
  (``hw_targets/loihi2/arithmetic.py``). ``reset`` quantizes the current float parameters into a
  :class:`~stft_neuro.hw_targets.loihi2.plan.DeploymentPlan` with the project's one quantizer
  (``quantize.plan_from_float``) and wraps the plan's integers with straight-through gradients
  (``quantize.qat_layers``; surrogate spikes normalised by each layer's state scale), so every
  sequence of deploy-mode training runs a plan, and ``deployment_plan()`` freezes the same one for
  the reference simulator and Lava. ``x_t`` are graded-spike payloads and ``theta_t``
  threshold-mantissa offsets (integers), checked against the plan exactly as the other integer
  backends check them; the host converts its currents and cues with ``plan`` (read after ``reset``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stft_neuro.contract import ChipState, run_by_steps
from stft_neuro.hw_targets.loihi2 import arithmetic, quantize
from stft_neuro.hw_targets.loihi2.plan import DEFAULT_DT_S, DeploymentPlan

MODES = ("float", "deploy")


class SigmoidSurrogateSpike(torch.autograd.Function):
    """Heaviside ``x > 0`` forward; ``k sig(kx)(1 - sig(kx))`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(ctx.slope * x)
        return grad * ctx.slope * sig * (1 - sig), None


def spike(x: Tensor, slope: float) -> Tensor:
    """Surrogate-gradient spike of ``x = v - vth``: 1.0 where ``x > 0``."""
    return SigmoidSurrogateSpike.apply(x, slope)


class ChipNetwork(nn.Module):
    """Stack of ``Dense -> LIF`` layers: sizes ``(n_in, n_1, ..., n_L)``.

    Parameters (float mode): ``weights[l]`` (n_{l+1}, n_l), ``biases[l]`` (n_{l+1},; frozen at zero
    with ``bias=False``), and shared
    ``du``, ``dv``, ``threshold`` (fixed, not trained: they are hardware registers chosen up front).
    """

    def __init__(self, sizes: tuple[int, ...], du: float, dv: float, threshold: float,
                 surrogate_slope: float, input_bits: int = 8, num_steps: int = 10,
                 dt: float = DEFAULT_DT_S, netx_compatible: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.mode = "float"
        self.input_bits = int(input_bits)
        self.netx_compatible = bool(netx_compatible)
        # Payloads with |q| <= k are sent as 0 (DeploymentPlan.payload_dead_zone; 0: none).
        self.payload_dead_zone = 0
        self.num_steps, self.dt = int(num_steps), float(dt)
        # Float value of one input payload LSB (deploy mode); 0 until calibrated on data.
        self.register_buffer("input_scale", torch.zeros(()))
        self._plan_cache: tuple | None = None   # (parameter key, plan, report)
        self._sequence: tuple | None = None     # (plan, qat layers, state scales) set by reset
        self._input_mask_hook = None            # prune_input_weights' gradient mask on weights[0]
        if len(sizes) < 2:
            raise ValueError(f"ChipNetwork needs at least one layer, got sizes {sizes}")
        self._sizes = tuple(int(n) for n in sizes)
        self.du, self.dv, self.threshold = float(du), float(dv), float(threshold)
        self.surrogate_slope = float(surrogate_slope)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(self._sizes[:-1], self._sizes[1:]):
            # Scaled so that a layer receiving ~10% active inputs reaches threshold in a few steps.
            w = torch.empty(n_out, n_in)
            nn.init.normal_(w, mean=0.0, std=2.0 * threshold / n_in ** 0.5)
            self.weights.append(nn.Parameter(w))
            # bias=False: kept at zero and out of training (a plan NIR consumers without v_leak load)
            self.biases.append(nn.Parameter(torch.zeros(n_out), requires_grad=bool(bias)))

    @torch.no_grad()
    def prune_input_weights(self, density: float) -> int:
        """Keep the ``density`` fraction of layer 1's weights with the largest ``|w|`` (over the
        whole matrix) and hold the others at exactly 0 from now on (``spiking.input_weight_density``,
        issue #17). Returns how many weights were pruned.

        Why layer 1: it receives the host's graded payloads, nearly all nonzero, so its synaptic
        events (nonzero payloads x nonzero fan-out) are most of the chip's energy; a zero weight is
        no synapse on Loihi and its fan-out shrinks. The pruned weights are zeros in every plan
        derived from here on, so every backend runs them and the report counts the fan-out left.

        How they stay 0: a gradient mask (a hook on ``weights[0]``). With an optimizer whose
        state starts here (QAT builds a fresh Adam), a zero gradient leaves the weight exactly at 0,
        L2 weight decay included (it adds ``wd * 0``)."""
        if not 0.0 < density <= 1.0:
            raise ValueError(f"prune_input_weights: density must lie in (0, 1], got {density}")
        w = self.weights[0]
        keep = max(1, round(density * w.numel()))
        mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        mask[w.detach().abs().flatten().argsort(descending=True, stable=True)[:keep]] = True
        mask = mask.view_as(w)
        w.mul_(mask)
        # non-persistent: a pruned run's weights carry their zeros; the mask only guards training
        self.register_buffer("input_mask", mask.to(w.dtype), persistent=False)
        if self._input_mask_hook is None:
            self._input_mask_hook = w.register_hook(lambda g: g * self.input_mask)
        return int(w.numel() - keep)

    @property
    def sizes(self) -> tuple[int, ...]:
        return self._sizes

    @property
    def num_layers(self) -> int:
        return len(self._sizes) - 1

    @torch.no_grad()
    def graded_init(self, x: Tensor, drive_std: float, drive_mean: float) -> list[tuple[float, float]]:
        """Data-based initialisation into the LIF's graded range (``spiking.init = graded``).

        ``x`` (T, B, n_in): float input currents of a training batch. Layer by layer (each on the
        previous layer's spikes of this batch), every neuron's weight row is rescaled so that its
        synaptic input ``a = W s`` has standard deviation ``drive_std`` (threshold units, over steps
        and samples), and its bias is set so that the drive's steady-state mean is ``drive_mean``:
        ``bias = (drive_mean - mean(a)) / du`` (a constant input ``c`` adds ``c / du`` to the membrane
        per step once the current has settled, as the bias ``b`` adds ``b``).

        Why: with this network's decays (du 0.25, dv 0.1) a neuron fires on every step once its
        steady current ``a / du`` reaches the threshold and never below ``dv * vth``, so rates
        are graded only for ``a`` in about ``[0.025, 0.25] vth``. The default initialisation gives
        ``a`` a spread of several thresholds, so every layer starts, and stays, a saturated sign
        code of its input: on a trained real-size run a linear probe reads the seen classes from
        layer-1 rates at S 10 % against S 79 % from the same layer's synaptic input
        (bench/bench_branch_probe.py; BENCHMARKS.md, issue #16). Data-based normalisation of
        this kind is the usual remedy (LSUV, Mishkin & Matas 2016; Rueckauer et al. 2017 for
        converted SNNs). Returns each layer's ``(std, mean)`` of ``a`` before rescaling."""
        before = []
        pre = x
        for l in range(self.num_layers):
            w, b = self.weights[l], self.biases[l]
            a = pre @ w.t()  # (T, B, n_out): the Dense's output of every step
            sd = a.std(dim=(0, 1)).clamp_min(1e-6)
            mean = a.mean(dim=(0, 1))
            before.append((float(sd.mean()), float(mean.mean())))
            scale = drive_std / sd
            w.mul_(scale[:, None])
            if b.requires_grad:  # spiking.bias = false keeps every bias at zero
                b.copy_((drive_mean - mean * scale) / self.du)
            state = self.reset(pre.shape[1])
            spikes, _ = self.run(x, None, state)
            pre = spikes[l]
        return before

    # -- deploy mode (Loihi 2 fixed point) ----------------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"ChipNetwork.set_mode: mode must be one of {MODES}, got {mode!r}")
        if mode == "deploy" and float(self.input_scale) <= 0:
            raise ValueError("ChipNetwork: deploy mode needs input_scale (calibrate_input first)")
        self.mode = mode
        self._sequence = None

    def float_layers(self) -> list[quantize.FloatLayer]:
        return [quantize.FloatLayer(name=f"lif{l + 1}", weight=w.detach().cpu().double().numpy(),
                                    bias=b.detach().cpu().double().numpy(), du=self.du, dv=self.dv,
                                    threshold=self.threshold)
                for l, (w, b) in enumerate(zip(self.weights, self.biases))]

    def deployment_plan(self) -> tuple[DeploymentPlan, quantize.QuantizationReport]:
        """The plan of the current parameters (``quantize.plan_from_float``) and its report.

        Pure (the module is not changed); cached until a weight, bias or the input scale changes.
        Deploy mode runs exactly this plan, integer for integer."""
        if float(self.input_scale) <= 0:
            raise ValueError("ChipNetwork.deployment_plan: calibrate the input scale first")
        key = tuple(p._version for p in (*self.weights, *self.biases)) + tuple(
            id(p) for p in (*self.weights, *self.biases)) + (float(self.input_scale), self.netx_compatible,
                                                             int(self.payload_dead_zone))
        if self._plan_cache is None or self._plan_cache[0] != key:
            plan, report = quantize.plan_from_float(self.float_layers(), float(self.input_scale),
                                                    self.input_bits, self.num_steps, self.dt,
                                                    netx_compatible=self.netx_compatible,
                                                    payload_dead_zone=int(self.payload_dead_zone))
            self._plan_cache = (key, plan, report)
        return self._plan_cache[1], self._plan_cache[2]

    @property
    def plan(self) -> DeploymentPlan | None:
        """The plan of the current sequence (deploy mode, after ``reset``); None in float mode."""
        return self._sequence[0] if (self.mode == "deploy" and self._sequence is not None) else None

    def reset(self, batch: int) -> ChipState:
        """Zero state for ``batch`` sequences; in deploy mode also the sequence's plan, with
        straight-through parameters that are part of this sequence's autograd graph."""
        if self.mode == "deploy":
            plan, report = self.deployment_plan()
            layers = quantize.qat_layers(plan, report, list(self.weights), list(self.biases))
            self._sequence = (plan, layers, [i.scales.state_scale for i in report.layers])
        ref = self.weights[0]
        zeros = tuple(ref.new_zeros(batch, n) for n in self._sizes[1:])
        return ChipState(u=zeros, v=zeros, a=zeros)

    def step(self, x_t: Tensor, theta_t: Tensor | None, state: ChipState
             ) -> tuple[tuple[Tensor, ...], ChipState]:
        """One step: ``x_t`` (B, n_in) input currents (float) or payloads (deploy), ``theta_t``
        (B, L) or None."""
        if self.mode == "deploy":
            if self._sequence is None:
                raise RuntimeError("ChipNetwork: deploy mode steps a sequence that reset() started")
            plan, layers, state_scales = self._sequence
            plan.check_payload(x_t)
            if theta_t is not None:
                plan.check_theta(theta_t)
            slope = self.surrogate_slope
            fns = [lambda x, s=s: spike(x / s, slope) for s in state_scales]
            spikes, state = arithmetic.chip_step(x_t, theta_t, state, layers, spike_fn=fns)
            return tuple(sp.to(x_t.dtype) for sp in spikes), state
        spikes, us, vs, new_a = [], [], [], []
        pre = x_t
        for l in range(self.num_layers):
            # The Dense of layer l receives this step's presynaptic spikes and delivers them next step.
            new_a.append(pre @ self.weights[l].t())  # (B, n_l)
            u = state.u[l] * (1.0 - self.du) + state.a[l]
            v = state.v[l] * (1.0 - self.dv) + u + self.biases[l]
            vth = self.threshold if theta_t is None else self.threshold + theta_t[:, l:l + 1]
            s = spike(v - vth, self.surrogate_slope)
            v = v * (1.0 - s.detach())
            spikes.append(s)
            us.append(u)
            vs.append(v)
            pre = s
        return tuple(spikes), ChipState(u=tuple(us), v=tuple(vs), a=tuple(new_a))

    def run(self, x: Tensor, theta: Tensor | None = None, state: ChipState | None = None
            ) -> tuple[tuple[Tensor, ...], ChipState]:
        """``x`` (T, B, n_in), ``theta`` (T, B, L) or None -> per-layer spikes (T, B, n_l)."""
        return run_by_steps(self, x, theta, state)
