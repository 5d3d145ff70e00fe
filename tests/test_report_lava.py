"""Counts from a Lava run equal counts from the reference simulator on the same samples."""
from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pytest

from stft_neuro.report.counts import count_plan_run
from stft_neuro.report.records import read_run_folder, write_run_folder
from stft_neuro.sim.reference import ReferenceSimulator

sys.path.insert(0, str(Path(__file__).parent))
from test_reference_sim import plan_of, random_inputs, random_network  # noqa: E402


@pytest.mark.lava
def test_lava_counts_equal_reference_counts(tmp_path):
    from stft_neuro.sim.lava_session import LavaSession
    net = random_network(3)
    plan = plan_of(net, 8)
    x, th = random_inputs(net, 3, 8, 2)
    counts = []
    for name in ("reference", "lava"):
        if name == "lava":
            with LavaSession(plan, int(x.shape[1])) as lava:
                spikes, _ = lava.run(x, th)
        else:
            spikes, _ = ReferenceSimulator(plan).run(x, th)
        run = write_run_folder(tmp_path / name, plan,
                               [s.transpose(0, 1).numpy() for s in spikes],
                               x.transpose(0, 1).numpy(), th.transpose(0, 1).numpy(),
                               {"backend": name})
        rf = read_run_folder(run)   # through the simulate record format, as `report` reads it
        counts.append(count_plan_run(rf.plan, rf.spikes, rf.payloads, rf.theta))
    ref, lava = counts
    assert ref.total("spikes") > 0 and ref.total("synaptic_events") > 0
    for name, a in ref.layers.items():
        b = lava.layers[name]
        for f in ("spikes", "synaptic_events", "acs", "macs", "active_updates", "inactive_updates",
                  "dense_ops"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), (name, f)
        assert a.nb_membrane_updates == b.nb_membrane_updates
    assert np.array_equal(ref.chip_to_host_spikes, lava.chip_to_host_spikes)
    assert multiprocessing.active_children() == []
