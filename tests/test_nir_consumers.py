"""The ``snntorch`` NIR profile against the real consumers: snnTorch 1.0's ``import_from_nir`` and
nirtorch 2.6's ``nir_to_torch`` load it, run it, and spike as the project's own float simulation
of the exact graph does, ``l`` steps earlier in layer ``l`` (the Dense delays are dropped).

How their simulation compares with the deployed network is measured here on the same payloads
(``-s`` prints the table; docs/export.md quotes it):

- project float simulation of the exact graph (``converters.nir_torch``, float32): equal spike for
  spike at lag ``l`` (asserted exactly);
- Loihi 2 fixed point (``sim.reference``, == Lava ``fixed_pt``), static thresholds: not exact,
  the decays and the weight exponent truncate; agreement asserted to a bound;
- the deployed closed loop with dynamic thresholds (the host's cues, real benchmark samples):
  the consumers have no threshold-modulation port; agreement asserted to a looser bound.

Shapes: payloads ``(T, B, n_in)``, spikes per layer ``(T, B, n_l)``. Everything is seeded.
"""
from __future__ import annotations

import contextlib
import io

import nir
import nirtorch
import numpy as np
import pytest
import torch
from snntorch import utils as snn_utils
from snntorch.import_nir import _nir_to_snntorch_module, import_from_nir

from stft_neuro.checkpoint import load_run
from stft_neuro.cli import main
from stft_neuro.converters.nir_in import read_nir
from stft_neuro.converters.nir_out import NIRExportError, plan_from_nir, plan_to_nir, write_nir
from stft_neuro.converters.nir_profiles import NIRProfileError, SNNTORCH_DT_S, lag_steps
from stft_neuro.converters.nir_torch import TorchSimulator
from stft_neuro.data import load_benchmark
from stft_neuro.export.bundle import load_bundle
from stft_neuro.hw_targets.loihi2 import quantize as Q
from stft_neuro.qat import calibrate
from stft_neuro.sim.reference import ReferenceSimulator

from test_cli import TINY, _sets, assert_one_line_error, run_cli

SMALL = (32, 24, 16, 12)
FULL = (512, 256, 256, 128)  # the STFT spiking branch's default size


def zero_bias_plan(seed: int, sizes=SMALL, T: int = 30):
    """Trained-like (Student t) weights through the project's quantizer, zero biases."""
    rng = np.random.default_rng(seed)
    floats = [Q.FloatLayer(name=f"lif{l + 1}",
                           weight=rng.standard_t(3, (sizes[l + 1], sizes[l])) * 2.5 / sizes[l] ** 0.5,
                           bias=np.zeros(sizes[l + 1]), du=0.25, dv=0.1, threshold=1.0)
              for l in range(len(sizes) - 1)]
    plan, _ = Q.plan_from_float(floats, input_scale=1.0 / 60, input_bits=8, num_steps=T)
    return plan


def random_payloads(seed: int, plan, T: int, B: int) -> torch.Tensor:
    rng = np.random.default_rng(seed + 1)
    lo, hi = plan.payload_range
    return torch.tensor(rng.integers(lo, hi + 1, (T, B, plan.n_in)), dtype=torch.float32)


def write_profiles(plan, folder):
    return (write_nir(plan_to_nir(plan), folder / "exact.nir"),
            write_nir(plan_to_nir(plan, profile="snntorch"), folder / "snntorch.nir"))


# -- the consumers ------------------------------------------------------------------------------

def _hooked(net, n_layers: int):
    """Forward hooks that record every ``lif_l`` module's spikes (nirtorch returns only the last)."""
    rec: dict[int, list] = {l: [] for l in range(1, n_layers + 1)}
    for l in rec:
        getattr(net, f"lif_{l}").register_forward_hook(
            lambda _m, _i, out, l=l: rec[l].append((out[0] if isinstance(out, tuple) else out).detach().clone()))
    return rec


def run_snntorch(path, x: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """snnTorch's own importer on the file; ``x`` (T, B, n_in) -> per-layer spikes (T, B, n_l)."""
    net = import_from_nir(nir.read(str(path)))
    rec = _hooked(net, n_layers)
    snn_utils.reset(net)  # zero the Synaptic hidden states (init_hidden=True)
    with torch.no_grad():
        for t in range(x.shape[0]):
            out, _ = net(x[t])
    last = torch.stack(rec[n_layers])
    assert torch.equal(out, last[-1]), "the graph's one Output is the last layer's spikes"
    return [torch.stack(rec[l]) for l in range(1, n_layers + 1)]


class ExplicitStateCubaLIF(torch.nn.Module):
    """A consumer's node map entry for nirtorch: snnTorch's own ``Synaptic`` for the node (built
    by snnTorch's importer with ``init_hidden=False``), with the state passed explicitly as
    nirtorch's interpreter threads it (``forward(x, state) -> (spikes, (syn, mem))``). nirtorch
    has no neuron mapping of its own: every consumer supplies one."""

    def __init__(self, node: nir.CubaLIF) -> None:
        super().__init__()
        self.lif = _nir_to_snntorch_module(node, init_hidden=False)

    def forward(self, x, state=None):
        syn, mem = state if state is not None else (torch.zeros_like(x), torch.zeros_like(x))
        spk, syn, mem = self.lif(x, syn, mem)
        return spk, (syn, mem)


def run_nirtorch(path, x: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """nirtorch's ``nir_to_torch`` (its default map for Input, Linear, Output), the caller's state."""
    net = nirtorch.nir_to_torch(str(path), {nir.CubaLIF: ExplicitStateCubaLIF})
    rec = _hooked(net, n_layers)
    state = None
    with torch.no_grad():
        for t in range(x.shape[0]):
            _, state = net(x[t], state)
    return [torch.stack(rec[l]) for l in range(1, n_layers + 1)]


def run_project_float(exact_path, x: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """The project's float simulation of the exact graph (Delay nodes honoured), float32."""
    graph, dt, _ = read_nir(exact_path)
    rec = TorchSimulator(graph, dt).run(x.transpose(0, 1), record=True)   # (B, T, n)
    return [rec[f"lif_{l}"].transpose(0, 1) for l in range(1, n_layers + 1)]


def aligned(consumer: torch.Tensor, ours: torch.Tensor, lag: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consumer step t against our step t + lag, over the steps both have."""
    T = consumer.shape[0]
    return consumer[:T - lag].bool(), ours[lag:].bool()


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(fraction of (t, b, n) entries equal, spike coincidence 2|a&b| / (|a| + |b|))."""
    both = int((a & b).sum())
    total = int(a.sum()) + int(b.sum())
    return float((a == b).float().mean()), (2.0 * both / total if total else 1.0)


# -- the graph ----------------------------------------------------------------------------------

def test_snntorch_profile_meets_the_consumers_conditions_and_reloads_exactly(tmp_path):
    plan = zero_bias_plan(0)
    _, path = write_profiles(plan, tmp_path)
    g = nir.read(str(path))  # NIR's own reader, type check on
    kinds = {name: type(node).__name__ for name, node in g.nodes.items()}
    assert "Delay" not in kinds.values() and "Affine" not in kinds.values()
    assert [n for n, k in kinds.items() if k == "Output"] == ["output"]
    assert ("lif_3", "output") in g.edges and ("linear_1", "lif_1") in g.edges
    for l in (1, 2, 3):  # snntorch/import_nir.py, CubaLIF branch, literally
        lif = g.nodes[f"lif_{l}"]
        assert np.allclose(lif.v_leak, 0) and np.all(lif.v_reset == 0)
        assert np.allclose(lif.r, lif.tau_mem / SNNTORCH_DT_S)
        assert np.allclose(lif.w_in * SNNTORCH_DT_S / lif.tau_syn, 1.0)
        assert np.unique(lif.v_threshold).size == 1
    assert float(np.asarray(g.metadata["dt"])) == SNNTORCH_DT_S
    assert list(np.asarray(g.metadata["stft_neuro.lag_steps"])) == [1, 2, 3] == list(lag_steps(plan))
    assert "Dense delays" in str(g.metadata["stft_neuro.dense_delay"])
    assert plan_from_nir(g).to_dict() == plan.to_dict()
    for a, b in zip(plan.network.layers, plan_from_nir(g).network.layers):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias_mant, b.bias_mant)


def test_the_exact_profile_is_what_the_consumers_cannot_load(tmp_path):
    """Why the profile exists: both fail on the exact graph's Delay node (before any wiring)."""
    exact, _ = write_profiles(zero_bias_plan(0), tmp_path)
    with pytest.raises(ValueError, match="Delay"):
        import_from_nir(nir.read(str(exact)))
    with pytest.raises(ValueError, match="Delay"):
        nirtorch.nir_to_torch(str(exact), {nir.CubaLIF: ExplicitStateCubaLIF})


def test_a_plan_with_biases_gets_the_documented_approximation(tmp_path):
    """Biases ride on the synaptic current as an Affine bias ``b * du`` (snnTorch needs v_leak = 0;
    nir_profiles "Biases"); the file says it is approximate and still reloads the exact plan."""
    from test_lava_equivalence import quantized_plan  # trained-like, biases N(0, 0.02)
    plan = quantized_plan(0, 10)
    path = write_nir(plan_to_nir(plan, profile="snntorch"), tmp_path / "b.nir")
    g = nir.read(str(path))
    assert "approximation" in str(g.metadata["stft_neuro.bias_form"])
    for l, layer in enumerate(plan.network.layers, start=1):
        node = g.nodes[f"linear_{l}"]
        du = (layer.du + 1) / 4096
        b = layer.bias_mant.astype(np.float64) * 2.0 ** layer.bias_exp
        assert isinstance(node, nir.Affine) and np.allclose(node.bias, b * du)
        assert np.allclose(g.nodes[f"lif_{l}"].v_leak, 0)
    back = plan_from_nir(g)
    assert back.to_dict() == plan.to_dict()
    assert all(np.array_equal(a.bias_mant, b.bias_mant) for a, b in zip(plan.network.layers, back.network.layers))
    # an edited bias is caught like any other parameter
    g.nodes["linear_2"].bias = g.nodes["linear_2"].bias * 1.5
    with pytest.raises(NIRExportError, match="linear_2.bias disagrees"):
        plan_from_nir(g)
    with pytest.raises(NIRProfileError, match="unknown NIR profile"):
        plan_to_nir(zero_bias_plan(0), profile="norse")


def test_biased_approximation_against_loihi_fixed_point_full_size(tmp_path):
    """Full STFT size, trained-like weights with biases, static thresholds: snnTorch (float32) on
    the approximate form against the reference simulator (== Lava fixed_pt) at lag l, beside the
    same weights without biases in the exact bias-free form. Measured: see docs/export.md."""
    from test_lava_equivalence import quantized_plan
    plan = quantized_plan(2, 30)
    zero = _without_biases(plan)
    x = random_payloads(2, plan, T=30, B=8)
    rows = []
    for which, p in (("biases", plan), ("bias-free", zero)):
        path = write_nir(plan_to_nir(p, profile="snntorch"), tmp_path / f"{which}.nir")
        cons = run_snntorch(path, x, p.num_layers)
        ref, _ = ReferenceSimulator(p).run(x.double())
        for l, lag in enumerate(lag_steps(p)):
            assert float(ref[l].float().mean()) > 0.02, f"layer {l + 1} silent"
            eq, dice = agreement(*aligned(cons[l], ref[l], lag))
            rows.append((which, l + 1, eq, dice))
    print("\nfull size, random payloads, snnTorch vs fixed point (static thresholds):")
    for r in rows:
        print(f"  {r[0]:<10} layer {r[1]}: equal {r[2]:.4f}  coincidence {r[3]:.4f}")
    L = plan.num_layers
    for l in range(L):
        biased, free = rows[l], rows[L + l]
        assert biased[2] >= 0.95 and biased[3] >= 0.93, biased
        assert biased[2] >= free[2] - 0.03, (biased, free)  # within 3 points of the exact form


def _without_biases(plan):
    import dataclasses

    from stft_neuro.hw_targets.loihi2.network import FixedPointNetwork
    layers = tuple(dataclasses.replace(x, bias_mant=np.zeros_like(x.bias_mant)) for x in plan.network.layers)
    return dataclasses.replace(plan, network=FixedPointNetwork(layers))


# -- the consumers run it -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_consumers_equal_the_project_float_simulation_shifted_by_the_dense_delays(seed, tmp_path):
    """snnTorch's import_from_nir and nirtorch's nir_to_torch give, spike for spike, the project's
    float simulation of the exact graph, layer l ``l`` steps earlier; at lag 0 they do not."""
    plan = zero_bias_plan(seed)
    exact, path = write_profiles(plan, tmp_path)
    x = random_payloads(seed, plan, T=40, B=4)
    snn_spikes = run_snntorch(path, x, plan.num_layers)
    nt_spikes = run_nirtorch(path, x, plan.num_layers)
    ours = run_project_float(exact, x, plan.num_layers)
    for l, lag in enumerate(lag_steps(plan)):
        rate = float(snn_spikes[l].mean())
        assert 0.02 < rate < 0.9, f"layer {l + 1} fires at {rate:.3f}: the test would prove nothing"
        assert torch.equal(nt_spikes[l], snn_spikes[l]), f"nirtorch != snnTorch in layer {l + 1}"
        a, b = aligned(snn_spikes[l], ours[l], lag)
        assert torch.equal(a, b), f"layer {l + 1}: {int((a != b).sum())} spikes differ at lag {lag}"
        a0, b0 = aligned(snn_spikes[l], ours[l], 0)
        assert not torch.equal(a0, b0), "without the lag they must differ (the delay is real)"


def test_consumers_against_loihi_fixed_point_full_size(tmp_path):
    """Full STFT size, trained-like weights, static thresholds: snnTorch (float32) against the
    reference simulator (== Lava fixed_pt), lag l. Measured: see docs/export.md; asserted bound."""
    plan = zero_bias_plan(3, FULL, T=30)
    _, path = write_profiles(plan, tmp_path)
    x = random_payloads(3, plan, T=30, B=8)
    cons = run_snntorch(path, x, plan.num_layers)
    ref, _ = ReferenceSimulator(plan).run(x.double())
    rows = []
    for l, lag in enumerate(lag_steps(plan)):
        assert float(cons[l].mean()) > 0.02 and float(ref[l].float().mean()) > 0.02
        eq, dice = agreement(*aligned(cons[l], ref[l], lag))
        eq0, _ = agreement(*aligned(cons[l], ref[l], 0))
        rows.append((l + 1, lag, eq, dice, eq0))
        assert eq >= 0.97 and dice >= 0.95, rows[-1]  # measured: >= 0.992 and >= 0.992
    print("\nfull size, random payloads, snnTorch vs fixed point (static thresholds):")
    for r in rows:
        print(f"  layer {r[0]} lag {r[1]}: equal {r[2]:.4f}  coincidence {r[3]:.4f}  (lag 0: equal {r[4]:.4f})")


# -- a real trained run, through the CLI --------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained by the CLI (12 steps so that every layer sees several inputs)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    with contextlib.redirect_stdout(io.StringIO()):  # keep `pytest -s` to the measured table
        assert main(["train", "--json", "--out", str(run), *_sets(*TINY, "spiking.num_steps=12")]) == 0
    return run


@pytest.fixture(scope="module")
def zero_bias_run(tmp_path_factory):
    """The same tiny run trained with ``spiking.bias=false``: the chip's biases stay exactly zero
    through training, so its plan exports with the snntorch profile."""
    run = tmp_path_factory.mktemp("runs") / "tiny-nobias"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--json", "--out", str(run),
                     *_sets(*TINY, "spiking.num_steps=12", "spiking.bias=false")]) == 0
    return run


def test_bias_free_training_keeps_the_biases_at_zero(trained, zero_bias_run, snn_bundle):
    biased, _, _ = load_run(trained)
    model, cfg, _ = load_run(zero_bias_run)
    assert cfg.spiking.bias is False
    assert all(not b.requires_grad and not b.any() for b in model.spiking.chip.biases)
    assert any(b.abs().max() > 0 for b in biased.spiking.chip.biases)  # trained ones move
    assert all(not layer.bias_mant.any() for layer in load_bundle(snn_bundle).plan.network.layers)


@pytest.fixture(scope="module")
def snn_bundle(zero_bias_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "snn"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", "--checkpoint", str(zero_bias_run), "--target", "nir",
                     "--nir-profile", "snntorch", "--out", str(out), "--json"]) == 0
    return out


def test_export_writes_the_profile_beside_the_exact_file(snn_bundle):
    bundle = load_bundle(snn_bundle)  # verifies every checksum
    m = bundle.manifest
    assert set(m["files"]) == {"plan.safetensors", "spiking.nir", "spiking_snntorch.nir"}
    assert m["nir"]["spiking.nir"]["profile"] == "exact"
    assert m["nir"]["spiking_snntorch.nir"]["profile"] == "snntorch"
    assert m["nir"]["spiking_snntorch.nir"]["lag_steps"] == [1, 2]
    for name in ("spiking.nir", "spiking_snntorch.nir"):
        assert plan_from_nir(nir.read(str(bundle.file(name)))).to_dict() == bundle.plan.to_dict()


def test_a_run_with_biases_exports_the_profile_and_refusals_are_one_line(capsys, trained, zero_bias_run, tmp_path):
    out = tmp_path / "b"
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(trained), "--target", "nir",
                           "--nir-profile", "snntorch", "--out", str(out), "--json")
    assert code == 0, err
    desc = load_bundle(out).manifest["nir"]["spiking_snntorch.nir"]
    assert desc["exact"] is False and "approximation" in desc["bias_form"]
    out2 = tmp_path / "c"
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(zero_bias_run), "--target", "onnx",
                           "--nir-profile", "snntorch", "--out", str(out2))
    assert_one_line_error(code, err, "use it with --target nir or --target all")
    assert not out2.exists()


def test_biased_run_agreement_on_benchmark_samples(trained, tmp_path):
    """The default (biased) tiny run's profile file: snnTorch and nirtorch (with the Affine mapped
    by the caller) agree with each other exactly, and with fixed point at lag l (static
    thresholds) to a bound; measured figures printed with -s."""
    out = tmp_path / "b"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", "--checkpoint", str(trained), "--target", "nir", "--nir-profile", "snntorch",
                     "--out", str(out), "--json"]) == 0
    bundle = load_bundle(out)
    plan = bundle.plan
    model, cfg, _ = load_run(trained)
    bench = load_benchmark(cfg.data)
    calibrate(model, bench.splits["stage_2_train"], torch.device("cpu"))
    split = bench.splits["stage_2_test_unseen"]
    a, v, n = (torch.as_tensor(x) for x in (split.audio, split.visual, split.lengths))
    with torch.no_grad():
        x = plan.encode_input(model.spiking.encode(a, v, n)[0]).float()
    L = plan.num_layers
    path = bundle.file("spiking_snntorch.nir")
    cons = run_snntorch(path, x, L)
    net = nirtorch.nir_to_torch(str(path), {nir.CubaLIF: ExplicitStateCubaLIF,
                                            nir.Affine: lambda node: _nir_to_snntorch_module(node)})
    rec = _hooked(net, L)
    state = None
    with torch.no_grad():
        for t in range(x.shape[0]):
            _, state = net(x[t], state)
    static, _ = ReferenceSimulator(plan).run(x.double())
    rows = []
    for l, lag in enumerate(lag_steps(plan)):
        assert torch.equal(torch.stack(rec[l + 1]), cons[l]), f"nirtorch != snnTorch in layer {l + 1}"
        assert float(static[l].sum()) > 0, f"layer {l + 1} silent"
        eq, dice = agreement(*aligned(cons[l], static[l], lag))
        rows.append((l + 1, lag, eq, dice))
        assert eq >= 0.9 and dice >= 0.85, rows[-1]
    print(f"\nbiased tiny run, {x.shape[1]} benchmark samples, T = {x.shape[0]}, snnTorch vs fixed point:")
    for l, lag, eq, dice in rows:
        print(f"  layer {l} lag {lag}: equal {eq:.4f} coincidence {dice:.4f}")


def test_agreement_on_benchmark_samples(snn_bundle, zero_bias_run):
    """The trained run's host encodes real (synthetic-benchmark) test samples; snnTorch runs the
    bundle's profile file on the payloads. Against the project's float simulation: exact at lag
    l. Against fixed point with static thresholds, and against the deployed closed loop with the
    host's dynamic thresholds: measured (printed with -s), asserted to bounds."""
    bundle = load_bundle(snn_bundle)
    plan = bundle.plan
    model, cfg, _ = load_run(zero_bias_run)
    bench = load_benchmark(cfg.data)
    calibrate(model, bench.splits["stage_2_train"], torch.device("cpu"))
    model.eval()
    split = bench.splits["stage_2_test_unseen"]
    a, v, n = (torch.as_tensor(x) for x in (split.audio, split.visual, split.lengths))
    with torch.no_grad():
        currents, _ = model.spiking.encode(a, v, n)
        x = plan.encode_input(currents).float()                              # (T, B, n_in)
        model.spiking.set_deploy(True)
        _, deployed = model.spiking(a, v, n, backend=ReferenceSimulator(plan))  # dynamic thresholds
    assert deployed.theta is not None and bool((deployed.theta != 0).any())
    L = plan.num_layers
    cons = run_snntorch(bundle.file("spiking_snntorch.nir"), x, L)
    ours = run_project_float(bundle.file("spiking.nir"), x, L)
    static, _ = ReferenceSimulator(plan).run(x.double())
    rows = []
    for l, lag in enumerate(lag_steps(plan)):
        assert float(cons[l].sum()) > 0 and float(deployed.spikes[l].sum()) > 0, f"layer {l + 1} silent"
        assert torch.equal(*aligned(cons[l], ours[l], lag))
        fixed = agreement(*aligned(cons[l], static[l], lag))
        dyn = agreement(*aligned(cons[l], deployed.spikes[l], lag))
        rows.append((l + 1, lag, fixed, dyn, float(cons[l].mean()), float(deployed.spikes[l].mean())))
        assert fixed[0] >= 0.95 and fixed[1] >= 0.9, rows[-1]   # measured: 1.0 and 1.0
        assert dyn[0] >= 0.8 and dyn[1] >= 0.75, rows[-1]       # measured: >= 0.93 and >= 0.92
    print(f"\ntrained tiny run, {x.shape[1]} benchmark samples, T = {x.shape[0]}, snnTorch vs:")
    for l, lag, fixed, dyn, rc, rd in rows:
        print(f"  layer {l} lag {lag}: fixed point static thr equal {fixed[0]:.4f} coincidence "
              f"{fixed[1]:.4f}; deployed dynamic thr equal {dyn[0]:.4f} coincidence {dyn[1]:.4f} "
              f"(rates {rc:.3f} vs {rd:.3f})")
