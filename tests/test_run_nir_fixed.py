"""`run-nir` in Loihi 2 fixed point: the reference simulator, Lava fixed_pt and the arithmetic's
torch definition give the same spikes, for a float graph quantized by the project's quantizer and
for the project's own exported plan (run exactly as written)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import snntorch as snn
import torch
from snntorch.export_nir import export_to_nir

from stft_neuro.cli import main
from stft_neuro.converters.nir_out import plan_to_nir, write_nir
from stft_neuro.sim.reference import ReferenceSimulator

from test_lava_equivalence import payloads, quantized_plan


def _leaky(n, beta, thr):
    return snn.Leaky(beta=torch.full((n,), beta), threshold=torch.full((n,), thr),
                     reset_mechanism="zero", reset_delay=False, init_hidden=True)


def leaky_chain(tmp_path, seed=0):
    """An snnTorch Leaky chain 16 -> 24 -> 12 (one beta and threshold per layer) as a NIR file,
    and an input (B=3, T=30) that makes both layers spike."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(16, 24), _leaky(24, 0.8, 1.0),
                              torch.nn.Linear(24, 12), _leaky(12, 0.7, 0.8))
    with torch.no_grad():
        net[2].weight.mul_(4.0)
    graph = export_to_nir(net, torch.zeros(1, 16), ignore_dims=[0])
    import nir
    path = tmp_path / "leaky.nir"
    nir.write(str(path), graph)
    x = torch.rand(3, 30, 16, generator=torch.Generator().manual_seed(seed)) * 2.0
    np.save(tmp_path / "x.npy", x.numpy())
    return path, tmp_path / "x.npy"


def run_nir(capsys, *argv):
    code = main(["run-nir", *map(str, argv), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_float_graph_in_fixed_point_same_on_reference_and_torch_definition(tmp_path, capsys):
    nir_path, x = leaky_chain(tmp_path)
    outs = {}
    for backend in ("reference", "torch"):
        info = run_nir(capsys, nir_path, "--input", x, "--out", tmp_path / f"{backend}.npy",
                       "--backend", backend, "--fixed-point")
        outs[backend] = np.load(tmp_path / f"{backend}.npy")
    assert outs["reference"].shape == (3, 30, 12)
    assert outs["reference"].sum() > 0, "the output layer must spike"
    assert np.array_equal(outs["reference"], outs["torch"])
    q = info["quantization"]
    assert q["input_bits"] == 8 and 0 <= q["payloads_saturated"] <= 0.002 * q["payloads"]  # 99.9th pct
    assert 0.5 < info["vs_float"]["equal_fraction"] <= 1.0
    assert info["depth"] and info["extra_zero_steps"] == max(info["depth"].values())


@pytest.mark.lava
def test_float_graph_in_fixed_point_lava_equals_reference(tmp_path, capsys):
    nir_path, x = leaky_chain(tmp_path, seed=1)
    run_nir(capsys, nir_path, "--input", x, "--out", tmp_path / "ref.npy", "--backend", "reference")
    run_nir(capsys, nir_path, "--input", x, "--out", tmp_path / "lava.npy", "--backend", "lava",
            "--fixed-point")
    ref, lava = np.load(tmp_path / "ref.npy"), np.load(tmp_path / "lava.npy")
    assert ref.sum() > 0 and np.array_equal(ref, lava)


def test_exported_plan_runs_exactly_as_written(tmp_path, capsys):
    """The project's own NIR (full size) on the reference backend == ReferenceSimulator(plan),
    every layer, no shift (its Delay nodes are Lava's Dense delays)."""
    plan = quantized_plan(2, 10)
    write_nir(plan_to_nir(plan), tmp_path / "plan.nir")
    x = payloads(2, plan, 10, 2)                                    # (T, B, n_in) payloads
    np.save(tmp_path / "x.npy", x.transpose(0, 1).numpy())        # (B, T, n_in)
    spikes, _ = ReferenceSimulator(plan).run(x)
    for l in range(3):
        info = run_nir(capsys, tmp_path / "plan.nir", "--input", tmp_path / "x.npy", "--out",
                       tmp_path / "y.npy", "--backend", "reference", "--output", f"spikes_{l + 1}")
        y = np.load(tmp_path / "y.npy")
        assert y.sum() > 0, f"layer {l} must spike"
        assert np.array_equal(y, spikes[l].transpose(0, 1).numpy()), f"layer {l}"
    assert info["plan"].startswith("exact") and info["extra_zero_steps"] == 0
