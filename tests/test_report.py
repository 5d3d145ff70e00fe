"""stft_neuro.report on plans: hand-computed counts, real simulator runs written as `simulate` run
folders, chunk/batch invariance, energy properties, the CLI, bad input, and the HTML in Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from stft_neuro.cli import main
from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
from stft_neuro.report import energy as E
from stft_neuro.report import neurobench as NB
from stft_neuro.report.build import build_report
from stft_neuro.report.counts import (HostCompute, LayerCounts, ReportInputError, RunCounts, count_plan_run,
                                      host_flops)
from stft_neuro.report.records import write_run_folder
from stft_neuro.sim.reference import ReferenceSimulator

sys.path.insert(0, str(Path(__file__).parent))
from test_reference_sim import plan_of, random_inputs, random_network  # noqa: E402


def hand_plan() -> DeploymentPlan:
    """3 -> 2 -> 1, du = dv = 4095 (u = a << 6 each step, v keeps nothing), vth = 1 (v > 64)."""
    l0 = FixedPointLayer("l0", np.array([[2, 0, 4], [0, 0, 6]]), 0, 4095, 4095, 1,
                         np.zeros(2, np.int64), 0, num_message_bits=8)
    l1 = FixedPointLayer("l1", np.array([[2, 2]]), 0, 4095, 4095, 1, np.zeros(1, np.int64), 0)
    return DeploymentPlan.of_network(FixedPointNetwork((l0, l1)), 3)


def run_plan(plan, x, theta=None):
    """Reference run -> records layout: spikes [(N, T, n) bool], payloads (N, T, n_in)."""
    sp, _ = ReferenceSimulator(plan).run(x, theta)
    return ([s.transpose(0, 1).numpy().astype(bool) for s in sp], x.transpose(0, 1).numpy(),
            None if theta is None else theta.transpose(0, 1).numpy())


def test_hand_computed_counts_neurobench_and_energy():
    """Worked by hand from the LIF equations (see hand_plan): layer l0 spikes once (neuron 0 at
    step 1), l1 once (step 2, one step of Dense delay later)."""
    plan = hand_plan()
    x = torch.tensor([[[1, 0, 0]], [[0, 0, 0]], [[3, 1, -1]]], dtype=torch.float32)   # (T, 1, 3)
    spikes, pay, _ = run_plan(plan, x)
    c = count_plan_run(plan, spikes, pay)
    l0, l1 = c.layers["l0"], c.layers["l1"]
    assert l0.spikes.tolist() == [0, 1, 0] and l1.spikes.tolist() == [0, 0, 1]
    # events: fan-out of nonzero weights per input column = (1, 0, 2)
    assert l0.synaptic_events.tolist() == [1, 0, 3]
    assert l0.acs.tolist() == [1, 0, 0] and l0.macs.tolist() == [0, 0, 3]   # payload 3: a MAC
    assert l1.synaptic_events.tolist() == [0, 1, 0] and l1.acs.sum() == 1
    assert l0.dense_ops.tolist() == [6, 6, 6] and l1.dense_ops.tolist() == [2, 2, 2]
    # active: l0 neuron 0 changes u at steps 1 (0 -> 128) and 2 (128 -> 0); l1 at step 2
    assert l0.active_updates.tolist() == [0, 1, 1] and l0.inactive_updates.tolist() == [2, 1, 1]
    assert l1.active_updates.tolist() == [0, 0, 1]
    # NeuroBench: all at step 0, then post-reset v changes: v is 0 after every step here
    assert (l0.nb_membrane_updates, l1.nb_membrane_updates) == (2, 1)
    assert c.payload_messages.tolist() == [1, 0, 3] and c.chip_to_host_spikes.tolist() == [0, 0, 1]
    m = NB.metrics(NB.plan_static(plan), c)
    assert m["SynapticOperations"] == {"Effective_MACs": 3.0, "Effective_ACs": 2.0, "Dense": 24.0}
    assert m["ActivationSparsity"] == pytest.approx(7 / 9)
    assert m["MembraneUpdates"] == 3.0
    assert m["ParameterCount"] == 8 + 3 and m["ConnectionSparsity"] == pytest.approx(3 / 8)
    assert m["Footprint"] == 8 * 1 + 3 * 2 + 2 * 6 * 4
    en = E.estimate(c, None)
    # 5 events x 23.6 + 3 active x 81 + 6 inactive x 52 + 2 spikes x 1 core x (1.7 + 1 x 3.0)
    assert en["chip"] == pytest.approx(5 * 23.6 + 3 * 81 + 6 * 52 + 2 * 4.7)
    assert en["ann_all_on_host"]["spiking_branch_as_ann"] == pytest.approx(24 * 4.6)


def test_counts_invariant_to_chunking_and_batching():
    net = random_network(3)
    plan = plan_of(net, 12)
    x, th = random_inputs(net, 3, 12, 7)
    spikes, pay, theta = run_plan(plan, x, th)
    whole = count_plan_run(plan, spikes, pay, theta)
    assert whole.total("spikes") > 0 and whole.total("synaptic_events") > 0
    chunked = count_plan_run(plan, spikes, pay, theta, chunk=2)
    merged = None
    for b in range(7):  # one sample at a time, separate simulator runs
        sb, pb, tb = run_plan(plan, x[:, b:b + 1], th[:, b:b + 1])
        part = count_plan_run(plan, sb, pb, tb)
        merged = part if merged is None else merged.merge(part)
    for other in (chunked, merged):
        for name, a in whole.layers.items():
            b = other.layers[name]
            for f in ("spikes", "synaptic_events", "acs", "macs", "active_updates", "dense_ops"):
                assert np.array_equal(getattr(a, f), getattr(b, f)), (name, f)
            assert a.nb_membrane_updates == b.nb_membrane_updates
        assert np.array_equal(whole.theta_nonzero, other.theta_nonzero)
        assert np.array_equal(whole.chip_to_host_spikes, other.chip_to_host_spikes)


def test_records_of_another_plan_are_refused():
    net = random_network(3)
    plan = plan_of(net, 12)
    x, th = random_inputs(net, 3, 12, 3)
    spikes, pay, theta = run_plan(plan, x, th)
    other = plan_of(random_network(4), 12)
    with pytest.raises(ReportInputError):
        count_plan_run(other, spikes, pay, theta)          # shapes differ
    flipped = [s.copy() for s in spikes]
    flipped[1][0, 5, 0] ^= True
    with pytest.raises(ReportInputError, match="not this plan's"):
        count_plan_run(plan, flipped, pay, theta)


# ---------------------------------------------------------------------------------- energy

def _counts(active, inactive, events, spikes):
    layer = LayerCounts("l", "Dense+LIF", neurons=4, spiking=True, spikes=np.array([spikes]),
                        active_updates=np.array([active]), inactive_updates=np.array([inactive]),
                        synaptic_events=np.array([events]), acs=np.array([events]),
                        macs=np.array([0]), dense_ops=np.array([16]))
    z = np.zeros(1, np.int64)
    return RunCounts(1, 1, {"l": layer}, z, z, z, z)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000),
       st.integers(0, 10_000), st.integers(1, 100), st.integers(0, 100), st.integers(1, 100))
def test_energy_grows_with_activity(active, inactive, events, spikes, d_events, d_spikes, d_act):
    """More events, more spikes, or an inactive update turned active: more energy (never less)."""
    base = E.estimate(_counts(active, inactive + d_act, events, spikes), None)["chip"]
    more = E.estimate(_counts(active + d_act, inactive, events + d_events, spikes + d_spikes),
                      None)["chip"]
    assert more > base


def test_energy_grows_with_input_activity_on_a_real_run():
    net = random_network(5)
    plan = plan_of(net, 10)
    x, _ = random_inputs(net, 5, 10, 4, theta=False)
    quiet = run_plan(plan, x * 0)
    loud = run_plan(plan, x)
    e = [E.estimate(count_plan_run(plan, s, p, t), None)["chip"] for s, p, t in (quiet, loud)]
    assert e[1] > e[0]


def test_constants_toml(tmp_path):
    good = tmp_path / "c.toml"
    good.write_text("[constants]\nloihi_synop_pj = 10.0\n")
    c = E.load_constants(good)
    assert c["loihi_synop_pj"].value == 10.0 and "override" in c["loihi_synop_pj"].source
    assert c["loihi_neuron_update_active_pj"].value == 81.0
    for text, msg in (("[constants]\nfoo = 1\n", "unknown constant 'foo'"),
                      ("[constants]\nloihi_synop_pj = -1\n", ">= 0"),
                      ("loihi_synop_pj = 'x'\n", "must be a number"),
                      ("[constants\n", "not valid TOML")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ReportInputError, match=re.escape(msg)):
            E.load_constants(bad)


# ---------------------------------------------------------------------------------- run folders

def real_model_run(tmp_path, B=4, S=8, seed=0):
    """A real-size STFT spiking branch (config defaults 512 -> 256 -> 256 -> 128, T = 10, dynamic
    thresholds), calibrated, quantized and run closed-loop on the reference simulator."""
    from stft_neuro.config import Config
    from stft_neuro.model.stft import STFT
    torch.manual_seed(seed)
    model = STFT(Config(), 64, 48).eval()
    a, v = torch.randn(B, S, 64), torch.randn(B, S, 48)
    n = torch.tensor([S, S - 3, S, 2][:B])
    model.spiking.calibrate_input(a, v, n)
    model.spiking.set_deploy(True)
    plan, _ = model.spiking.deployment_plan()
    with torch.no_grad():
        x, g = model.spiking.encode(a, v, n)
        rec = model.spiking.drive(x, g, ReferenceSimulator(plan))
    payloads = rec.sent.detach()  # the payloads the loop sent
    run = write_run_folder(tmp_path / "run", plan, [s.transpose(0, 1).numpy() for s in rec.spikes],
                           payloads.transpose(0, 1).numpy(), rec.theta.transpose(0, 1).numpy(),
                           {"backend": "reference", "metrics": {}, "timings": {}},
                           labels=np.arange(B), pred=np.arange(B))
    return model, plan, rec, payloads, run


def test_report_cli_on_a_real_size_run_folder(tmp_path, capsys):
    model, plan, rec, payloads, run = real_model_run(tmp_path)
    rc = main(["report", "--run", str(run), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "lif" in out and "no Loihi 2 table is published" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    for k in NB.KEYS:
        assert k in rep
    assert set(rep["SynapticOperations"]) == {"Effective_MACs", "Effective_ACs", "Dense"}
    names = [layer.name for layer in plan.network.layers]
    assert list(rep["layers"]) == names
    B = payloads.shape[1]
    for name, s in zip(names, rec.spikes):
        d = rep["layers"][name]
        assert d["spikes"] == pytest.approx(float(s.sum()) / B)
        assert d["spikes_per_step"] == pytest.approx((s.sum(dim=(1, 2)) / B).tolist())
        assert d["neurons"] == s.shape[2] and d["synaptic_events"] > 0
        assert set(d["energy_pj"]) == {"synaptic", "neuron_updates", "spike_messages", "total"}
    # the first layer's events, counted here from the definition: every nonzero payload times the
    # fan-out of the weights Lava's Dense holds. The plan's weights have both signs, so Lava keeps
    # them in its mixed sign mode and floors them to even values (lava/proc/dense/models.py,
    # truncate_weights): a weight of 0 or 1 holds nothing, any other does.
    w = plan.network.layers[0].weight
    assert (w > 0).any() and (w < 0).any()
    fan = [sum(1 for j in range(w.shape[0]) if int(w[j, i]) not in (0, 1)) for i in range(w.shape[1])]
    pay = payloads.numpy()
    want = sum(fan[i] for t in range(pay.shape[0]) for b in range(B) for i in np.flatnonzero(pay[t, b]))
    assert want > 0 and rep["layers"][names[0]]["synaptic_events"] == pytest.approx(want / B)
    assert rep["messages"]["host_to_chip"]["theta"] == plan.num_steps * plan.num_layers
    assert rep["energy"]["estimate"] is True
    assert rep["energy"]["constants"]["loihi_synop_pj"]["source"].startswith("Davies")
    assert rep["host"]["available"] is False and "checkpoint" in rep["host"]["why"]


def test_host_flops_are_counted_on_the_real_modules():
    """FlopCounterMode's counts of the encoder and projection equal their shapes' MACs x 2."""
    from stft_neuro.config import Config
    from stft_neuro.model.stft import STFT
    torch.manual_seed(0)
    model = STFT(Config(), 64, 48)
    h = host_flops(model, seconds=8)
    T, D, n_in = 10, 112, 512
    assert h["encoder"].flops == 2 * (T * 8 * D + T * D * n_in) == 2 * h["encoder"].estimate_macs
    assert h["projection"].flops == 2 * model.joint.in_features * model.joint.out_features
    assert h["transformer"].flops > 0 and h["fusion"].flops > 0
    assert h["threshold_cue"].flops == 0 and h["threshold_cue"].estimate_macs > 0  # elementwise
    # the host energy of known MACs, by hand: 1000 + 24 MACs at 4.6 pJ each (fp32 MAC, Horowitz)
    counts = RunCounts(1, 1, {}, *(np.zeros(1, np.int64),) * 4)
    known = {"encoder": HostCompute(2000, 0), "projection": HostCompute(48, 0)}
    assert E.estimate(counts, known)["host"] == pytest.approx(1024 * 4.6)


def test_report_bad_input_one_line(tmp_path, capsys):
    _, plan, rec, payloads, run = real_model_run(tmp_path, B=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run / "plan.safetensors", empty / "plan.safetensors")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(run / "records.npz", other / "records.npz")
    plan_of(random_network(1), 10).save(other / "plan.safetensors")
    bad_key = tmp_path / "k.toml"
    bad_key.write_text("[constants]\nloihi_synapse = 3\n")
    neg = tmp_path / "n.toml"
    neg.write_text("[constants]\nhost_fp32_mac_pj = -4.6\n")
    cases = [(["--run", str(empty)], "no records.npz"),
             (["--run", str(other)], "plan"),
             (["--run", str(run), "--constants", str(bad_key)], "unknown constant"),
             (["--run", str(run), "--constants", str(neg)], ">= 0"),
             (["--run", str(tmp_path / "nope")], "no such run folder")]
    for argv, msg in cases:
        rc = main(["report", *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and len(err.splitlines()) == 1 and msg in err, (argv, err)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_html_report_renders_in_headless_chromium(tmp_path):
    _, plan, _, _, run = real_model_run(tmp_path, B=2)
    page = tmp_path / "html" / "report.html"
    assert main(["report", "--run", str(run), "--html", str(page)]) == 0
    from stft_neuro.report.html import PLOTS
    for name in PLOTS:
        png = page.parent / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = page.read_text()
    assert text.count("data:image/png;base64,") == len(PLOTS) and "src=\"http" not in text
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium found (install Debian's `chromium`; .ci/run does)")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body, proc.stderr[-2000:]
    assert f'data-images-ok="{len(PLOTS)}"' in body.group(0), body.group(0)
    assert 'data-script-errors="0"' in body.group(0), body.group(0)
    assert "Uncaught" not in proc.stderr


def test_build_report_schema_without_host():
    plan = hand_plan()
    x = torch.tensor([[[1, 0, 0]], [[0, 0, 0]], [[3, 1, -1]]], dtype=torch.float32)
    spikes, pay, _ = run_plan(plan, x)
    rep = build_report(count_plan_run(plan, spikes, pay), NB.plan_static(plan), None)
    json.dumps(rep)  # JSON-ready
    assert rep["layers"]["l0"]["spikes_per_step"] == [0.0, 1.0, 0.0]
    assert rep["energy"]["host"] is None and rep["messages"]["chip_to_host"]["spikes"] == 1.0


# ---------------------------------------------------------------------------------- axes, compare

def _capture_figures(monkeypatch) -> list:
    """Keep every figure the report draws (instead of only its PNG bytes)."""
    from stft_neuro.report import html as H
    figs = []
    real = H._png

    def keep(fig):
        figs.append(fig)
        fig.canvas.draw()   # limits settle as when saved
        lims = [(ax.get_xscale(), ax.get_yscale(), ax.get_xlim(), ax.get_ylim(), ax.get_title())
                for ax in fig.axes]
        fig._kept = lims
        return real(fig)
    monkeypatch.setattr(H, "_png", keep)
    return figs


def test_every_plot_has_linear_axes_from_zero(tmp_path, monkeypatch):
    """Bars and counts on linear axes that start at zero (the signed theta plot includes zero)."""
    _, plan, _, _, run = real_model_run(tmp_path, B=2)
    figs = _capture_figures(monkeypatch)
    assert main(["report", "--run", str(run), "--html", str(tmp_path / "r.html")]) == 0
    assert len(figs) == 6
    by_name = dict(zip(("raster", "layers", "activity", "theta", "energy", "loihi_vs_ann"), figs))
    for name, fig in by_name.items():
        for xs, ys, xl, yl, title in fig._kept:
            assert xs == "linear" and ys == "linear", (name, title)
            if name in ("layers", "activity", "energy", "loihi_vs_ann"):
                assert yl[0] == 0.0, (name, title, yl)
            if name == "theta":
                assert yl[0] <= 0.0 <= yl[1], (name, yl)
    # the case: a ratio of ~3.5x must look like it (bars from zero)
    titles = [k[4] for k in by_name["loihi_vs_ann"]._kept]
    assert any("Loihi / host" in t for t in titles)


def _sim_folder(path, plan, x, th, hm):
    from stft_neuro.hw_targets.loihi2.plan import apply_dead_zone
    x = apply_dead_zone(x, plan.payload_dead_zone)
    sp, _ = ReferenceSimulator(plan).run(x, th)
    return write_run_folder(path, plan, [s.transpose(0, 1).numpy() for s in sp], x.transpose(0, 1).numpy(),
                            th.transpose(0, 1).numpy(),
                            {"backend": "reference", "metrics": {"S": hm, "U": hm, "HM": hm, "ZSL": hm}})


def test_report_compare_plots_json_and_table(tmp_path, capsys, monkeypatch):
    import dataclasses
    from stft_neuro.report.cli import report_run_folder
    from test_lava_equivalence import payloads, quantized_plan, thetas
    T, B = 10, 3
    base = quantized_plan(5, T)
    x, th = payloads(5, base, T, B), thetas(5, base, T, B)
    runs = [_sim_folder(tmp_path / "a" / "sim", base, x, th, 31.0),
            _sim_folder(tmp_path / "b" / "sim", dataclasses.replace(base, payload_dead_zone=50), x, th, 29.5)]
    figs = _capture_figures(monkeypatch)
    out_json, out_png, out_html = tmp_path / "c.json", tmp_path / "c.png", tmp_path / "c.html"
    assert main(["report", "--compare", *map(str, runs), "--json", str(out_json), "--png", str(out_png),
                 "--html", str(out_html)]) == 0
    text = capsys.readouterr().out
    assert "a/sim" in text and "b/sim" in text and "ESTIMATES" in text
    cmp = json.loads(out_json.read_text())
    assert cmp["format"] == "stft-neuro/report-compare" and [r["name"] for r in cmp["runs"]] == ["a/sim", "b/sim"]
    for r, run in zip(cmp["runs"], runs):
        single = report_run_folder(run)[0]
        assert r["chip_uj"] == pytest.approx(single["energy"]["chip"] / 1e6)
        assert r["ann_branch_uj"] == pytest.approx(single["energy"]["ann_all_on_host"]["spiking_branch_as_ann"] / 1e6)
    assert cmp["runs"][0]["HM"] == 31.0 and cmp["runs"][1]["payload_dead_zone"] == 50
    assert cmp["runs"][1]["chip_uj"] < cmp["runs"][0]["chip_uj"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "data:image/png;base64," in out_html.read_text()
    (fig,) = figs
    for (xs, ys, xl, yl, _), ref in zip(fig._kept, ("ann_branch_uj", "ann_total_uj")):
        assert (xs, ys) == ("linear", "linear") and xl[0] == 0.0 and yl[0] == 0.0
        assert xl[1] >= max(r[ref] for r in cmp["runs"])  # the all-on-host reference is in view
    rc = main(["report", "--run", str(runs[0]), "--png", str(out_png)])
    assert rc == 1 and "--png goes with --compare" in capsys.readouterr().err
