"""The quality sweep (stft_neuro/quality_sweep.py, run by bench/bench_quality.py): run order,
resumability checks, and the report's paired statistics."""
from __future__ import annotations

import json
import sys

import pytest

from stft_neuro import config as config_mod
from stft_neuro import quality_sweep as bq


def test_tier_1_runs_first_on_every_seed() -> None:
    got = bq.order(list(bq.VARIANTS), [0, 1])
    tier1 = [(v, s) for v, s in got if v in bq.TIER_1]
    assert got[:len(tier1)] == tier1 and len(got) == 2 * len(bq.VARIANTS)
    assert got[0] == (bq.RIDGE_FAMILY, 0) and got[len(bq.TIER_1)] == (bq.RIDGE_FAMILY, 1)


def test_same_config_tolerates_new_default_keys_only() -> None:
    now = config_mod.load(overrides=bq.DEFAULT_SET).to_dict()
    stored = json.loads(json.dumps(now))  # tuples become lists, as in the results file
    del stored["fusion"]["output_norm"]  # a switch added after the results were made
    assert bq.same_config(stored, now)
    changed = config_mod.load(overrides=[*bq.DEFAULT_SET, "fusion.output_norm=true"]).to_dict()
    assert not bq.same_config(stored, changed)
    stored["train"]["epochs"] = 3
    assert not bq.same_config(stored, now)


def test_same_config_reads_a_missing_key_as_the_runs_it_predates_trained() -> None:
    """Results made before ``train.spiking_weight_decay`` existed decayed the spiking branch by
    ``train.weight_decay``: they match a config whose recipe resolves both to the same value, and
    not one that decays the branch differently."""
    overrides = [*bq.DEFAULT_SET, "train.weight_decay=1e-3"]
    now = config_mod.load(overrides=overrides).to_dict()
    assert now["train"]["spiking_weight_decay"] == 1e-3  # the real-size recipe's
    stored = json.loads(json.dumps(now))
    del stored["train"]["spiking_weight_decay"]
    assert bq.same_config(stored, now)
    other = config_mod.load(overrides=[*overrides, "train.spiking_weight_decay=1e-4"]).to_dict()
    assert not bq.same_config(stored, other)


def test_report_against_another_base_variant() -> None:
    row = lambda hm: {"S": 50.0, "U": 20.0, "HM": hm, "ZSL": 20.0, "seconds": 1.0}  # noqa: E731
    data = {"results": {bq.SALIENCY: {"0": row(50.0), "1": row(52.0), "2": row(51.0)},
                        bq.RIDGE_FAMILY: {"0": row(45.0), "1": row(46.0), "2": row(44.0)},
                        bq.SALIENCY_NO_SPIKING: {"0": row(46.0), "1": row(47.0), "2": row(46.0)}}}
    text = bq.report_text(data, config_mod.load(overrides=bq.DEFAULT_SET), bq.SALIENCY)
    lines = {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "| — |" in lines[bq.SALIENCY]
    assert "-6.0 [" in lines[bq.RIDGE_FAMILY] and "-4.7 [" in lines[bq.SALIENCY_NO_SPIKING]


def test_report_pairs_seeds_and_gives_the_t_interval() -> None:
    row = lambda hm, s: {"S": 50.0, "U": 20.0, "HM": hm, "ZSL": 20.0, "seconds": s}  # noqa: E731
    data = {"cpu": "test CPU", "chance": {"S": 2.0, "U": 2.0, "HM": 2.0, "ZSL": 11.1},
            "results": {bq.REFERENCE: {"0": row(40.0, 100), "1": row(42.0, 120), "2": row(41.0, 110)},
                        bq.RIDGE_FAMILY: {"0": row(30.0, 1), "1": row(31.0, 1), "2": row(32.0, 1), "3": row(99.0, 1)}}}
    text = bq.report_text(data, config_mod.load(overrides=bq.DEFAULT_SET))
    ridge_line = next(ln for ln in text.splitlines() if ln.startswith(f"| {bq.RIDGE_FAMILY}"))
    # differences -10, -11, -9 on the 3 paired seeds (seed 3 has no partner): mean -10, sd 1
    half = 4.303 / 3 ** 0.5
    assert f"-10.0 [{-10 - half:+.1f}, {-10 + half:+.1f}] (n=3) *" in ridge_line
    assert "| 110 |" in next(ln for ln in text.splitlines() if ln.startswith(f"| {bq.REFERENCE}"))
    assert "| chance (uniform guess) | — | 2.0 | 2.0 | 2.0 | 11.1 |" in text
    assert "spiking branch is worth" not in text  # no worth recorded: no worth table


def test_report_pairs_the_spiking_branch_worth() -> None:
    """Shuffled 4, 5, 6 points below as trained on three seeds: mean -5, sd 1, t-interval."""
    rows = {str(k): {"S": 50.0, "U": 20.0, "HM": hm, "ZSL": 20.0, "seconds": 1.0,
                     "worth": {"as_trained": hm, "shuffled": hm - 4 - k, "zeroed": 0.0}}
            for k, hm in enumerate((40.0, 42.0, 41.0))}
    text = bq.report_text({"results": {bq.REFERENCE: rows}}, config_mod.load(overrides=bq.DEFAULT_SET))
    line = next(ln for ln in text.splitlines() if ln.startswith("| shuffled across samples"))
    half = 4.303 / 3 ** 0.5
    assert f"| 36.0 ± 1.0 | -5.0 [{-5 - half:+.1f}, {-5 + half:+.1f}] (n=3) * |" in line


def test_results_of_another_configuration_are_refused(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "q.json"
    out.write_text(json.dumps({"overrides": ["data.sizes=small"], "config": {}, "results": {}}))
    monkeypatch.setattr(sys, "argv", ["bench_quality.py", "run", "--out", str(out), "--seeds", "0"])
    assert bq.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another configuration" in err[0]
