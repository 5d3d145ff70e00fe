"""LI / CubaLI readouts in Loihi 2 fixed point (issue #20 item 1).

An snnTorch-like graph ``Linear -> CubaLIF -> Linear -> LI`` (or ``CubaLI``) written with the ``nir``
package at 64-128-10, T = 50: the readout is a population that never spikes and sends its membrane
``v`` every step (Lava's LIF arithmetic without threshold and reset;
``sim/lava_procs.PyLIReadoutModelBitAcc``). The layer-by-layer reference, the step-by-step torch
definition and Lava fixed_pt give the same integers every step; the hidden layer spikes; ``v``
varies and reaches a large magnitude; its value in float units (``v / state_scale``) correlates with
the float run's LI output (> 0.95, printed). ``run-nir --fixed-point`` writes that float-unit ``v``;
``deploy`` counts the readout's neuron updates, no spikes, and one message per neuron per step to
the host.
"""
from __future__ import annotations

import json
import multiprocessing

import nir
import numpy as np
import pytest
import torch

from stft_neuro.cli import main
from stft_neuro.converters import nir_fixed as F
from stft_neuro.converters.nir_in import read_nir
from stft_neuro.converters.nir_lava import lower
from stft_neuro.converters.nir_torch import TorchSimulator
from stft_neuro.hw_targets.loihi2 import quantize as Q

DT = 1e-4
N_IN, N_H, N_O, B, T = 64, 128, 10, 4, 50


def li_net(kind: str = "LI", seed: int = 0) -> nir.NIRGraph:
    """snnTorch's conventions (beta = 1 - dt/tau, r = tau/dt): Synaptic(alpha .5, beta .9,
    threshold 1) hidden layer, then a Leaky-without-spikes readout (beta .95), or a CubaLI one."""
    rng = np.random.default_rng(seed)

    def tau(b, n):
        return np.full(n, DT / (1 - b))

    readout = (nir.LI(tau=tau(0.95, N_O), r=np.full(N_O, 1 / (1 - 0.95)), v_leak=np.zeros(N_O))
               if kind == "LI" else
               nir.CubaLI(tau_syn=tau(0.8, N_O), tau_mem=tau(0.95, N_O),
                          r=np.full(N_O, 1 / (1 - 0.95)), v_leak=np.zeros(N_O),
                          w_in=np.full(N_O, 1 / (1 - 0.8))))
    nodes = {"input": nir.Input(input_type=np.array([N_IN])),
             "fc1": nir.Affine(weight=rng.normal(0, 2 / np.sqrt(N_IN), (N_H, N_IN)),
                               bias=rng.normal(0, 0.05, N_H)),
             "lif1": nir.CubaLIF(tau_syn=tau(0.5, N_H), tau_mem=tau(0.9, N_H),
                                 r=np.full(N_H, 1 / (1 - 0.9)), v_leak=np.zeros(N_H),
                                 v_threshold=np.ones(N_H), v_reset=np.zeros(N_H),
                                 w_in=np.full(N_H, 1 / (1 - 0.5))),
             "fc2": nir.Affine(weight=rng.normal(0, 1 / np.sqrt(N_H), (N_O, N_H)),
                               bias=np.zeros(N_O)),
             "readout": readout, "output": nir.Output(output_type=np.array([N_O]))}
    return nir.NIRGraph(nodes=nodes, edges=[("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"),
                                            ("fc2", "readout"), ("readout", "output")])


def _input(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (B, T, N_IN))


def case(tmp_path, kind="LI"):
    """(fixed-point graph, lowered plan, Lava-step payloads (S, B, n_in), read graph, x)."""
    nir.write(tmp_path / "g.nir", li_net(kind))
    gr, dt, _ = read_nir(tmp_path / "g.nir")
    lp = lower(gr, dt)
    x = _input()
    scale = Q.input_scale_for(float(np.percentile(np.abs(x), 99.9)), 8)
    fg, _ = F.quantize_graph(lp, scale, 8)
    pay = torch.from_numpy(np.clip(np.round(x / scale), -128, 127))
    pay = torch.cat([pay, torch.zeros(B, lp.max_depth, N_IN, dtype=pay.dtype)], 1)
    return fg, lp, pay.transpose(0, 1).contiguous(), gr, x


def float_units(fg, lp, v):
    """The readout's integer v (S, B, n) -> float units (B, T, n), aligned to input time."""
    st = lp.stage("readout")
    return (v[st.depth:st.depth + T].numpy().transpose(1, 0, 2).astype(np.float64)
            / fg.of_layer("readout")[0].state_scale)


def check_regime_and_float(fg, lp, ref, gr, x, kind):
    pop = fg.of_layer("readout")[0]
    assert pop.readout and not fg.of_layer("lif1")[0].readout
    assert ref["lif1"].sum() > 1000, "the hidden layer must spike"
    v = ref["readout"]
    assert torch.equal(v, torch.round(v))
    assert int(torch.unique(v).numel()) > 1000 and float(v.std()) > 0, "v must vary"
    assert float(v.abs().max()) > 2 ** 16, "v must reach a large integer magnitude"
    ours = float_units(fg, lp, v)
    theirs = TorchSimulator(gr, DT).run(torch.from_numpy(x), record=True)["readout"].numpy()
    corr = float(np.corrcoef(ours.ravel(), theirs.reshape(B, T, -1).ravel())[0, 1])
    print(f"{kind} readout: fixed-point v (float units) vs float run: correlation {corr:.5f}, "
          f"|v| up to {float(v.abs().max()):.0f} LSBs (state scale {pop.state_scale:.1f})")
    assert corr > 0.95


@pytest.mark.parametrize("kind", ["LI", "CubaLI"])
def test_reference_equals_definition_and_tracks_float(tmp_path, kind):
    fg, lp, pay, gr, x = case(tmp_path, kind)
    ref = F.run_reference(fg, pay)
    d = F.run_definition(fg, pay)
    for k in ref:
        assert torch.equal(ref[k], d[k]), f"layer {k}: {int((ref[k] != d[k]).sum())} values differ"
    check_regime_and_float(fg, lp, ref, gr, x, kind)


@pytest.mark.lava
@pytest.mark.parametrize("kind", ["LI", "CubaLI"])
def test_lava_fixed_pt_equals_reference_every_step(tmp_path, kind):
    fg, lp, pay, gr, x = case(tmp_path, kind)
    ref = F.run_reference(fg, pay)
    lv = F.LavaFixedRunner(fg).run(pay)
    assert lv.keys() == ref.keys()
    for k in ref:
        assert torch.equal(lv[k], ref[k]), f"layer {k}: {int((lv[k] != ref[k]).sum())} values differ"
    check_regime_and_float(fg, lp, ref, gr, x, kind)
    assert multiprocessing.active_children() == []


def test_run_nir_writes_the_readout_v_in_float_units(tmp_path, capsys):
    fg, lp, pay, gr, x = case(tmp_path)
    np.save(tmp_path / "x.npy", x)
    ys = {}
    for b in ("reference", "torch"):
        assert main(["run-nir", str(tmp_path / "g.nir"), "--input", str(tmp_path / "x.npy"),
                     "--out", str(tmp_path / f"{b}.npy"), "--fixed-point", "--backend", b,
                     "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["vs_float"]["readout"] and info["vs_float"]["correlation"] > 0.95
        ys[b] = np.load(tmp_path / f"{b}.npy")
    want = float_units(fg, lp, F.run_reference(fg, pay)["readout"]).astype(np.float32)
    assert np.array_equal(ys["reference"], want) and np.array_equal(ys["torch"], want)
    with pytest.raises(SystemExit):
        main(["run-nir", "--help"])
    assert "membrane v" in capsys.readouterr().out


def test_deploy_counts_a_readout_and_its_bundle_runs_again(tmp_path, capsys):
    fg, lp, pay, gr, x = case(tmp_path)
    np.save(tmp_path / "x.npy", x)
    assert main(["deploy", str(tmp_path / "g.nir"), "--input", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "dep"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    S = T + lp.max_depth
    lay = rep["layers"]["readout"]
    assert lay["spiking"] is False and lay["spikes"] == 0
    assert rep["layers"]["lif1"]["spikes"] > 0
    assert rep["messages"]["chip_to_host"]["spikes"] == S * N_O          # per sample: v of every neuron, every step
    ag = rep["deploy"]["float_agreement"]["readout"]
    assert ag["readout"] and ag["correlation"] > 0.95
    assert main(["run-nir", str(tmp_path / "dep"), "--input", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "y.npy")]) == 0
    capsys.readouterr()
    want = float_units(fg, lp, F.run_reference(fg, pay)["readout"]).astype(np.float32)
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)
