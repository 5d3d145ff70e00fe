"""``stft-neuro doctor``: what is installed, whether Lava imports, and whether its simulator runs.

The Lava check runs a one-layer fixed-point Dense+LIF network for a few steps in Lava's
``fixed_pt`` simulator and in the reference simulator, and compares every spike: it proves that
the mended Lava runs here and that it computes what ``stft_neuro.sim.reference`` computes.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import time

import numpy as np

DISTRIBUTIONS = ("stft-neuro", "torch", "numpy", "snntorch", "nir", "nirtorch", "onnx",
                 "onnxruntime", "onnxscript", "lava-nc", "lava-dl", "h5py", "safetensors")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def lava_imports() -> tuple[bool, str]:
    try:
        for mod in ("lava.magma.core.run_configs", "lava.proc.lif.process", "lava.proc.dense.process",
                    "lava.lib.dl.netx", "lava.lib.dl.slayer"):
            importlib.import_module(mod)
    except Exception as exc:  # any import failure is the answer here
        return False, f"{type(exc).__name__}: {exc}"
    return True, "ok"


def lava_smoke(steps: int = 4) -> dict:
    """Run a tiny network in Lava fixed_pt and in the reference simulator; compare spikes."""
    import torch

    from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
    from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan
    from stft_neuro.sim.lava_session import LavaSession
    from stft_neuro.sim.reference import ReferenceSimulator

    rng = np.random.default_rng(0)
    layer = FixedPointLayer(name="lif1", weight=rng.integers(-60, 60, size=(4, 3)) * 2,
                            weight_exp=0, du=400, dv=300, vth=40,
                            bias_mant=np.zeros(4, dtype=np.int64), bias_exp=0, num_message_bits=8)
    plan = DeploymentPlan.of_network(FixedPointNetwork(layers=(layer,)), steps)
    x = torch.as_tensor(rng.integers(0, 100, size=(steps, 1, 3)), dtype=torch.float32)
    t0 = time.perf_counter()
    with LavaSession(plan, 1) as lava:
        lava_spikes, _ = lava.run(x)
    seconds = time.perf_counter() - t0
    ref_spikes, _ = ReferenceSimulator(plan).run(x)
    same = all(torch.equal(a.cpu().float(), b.cpu().float()) for a, b in zip(lava_spikes, ref_spikes))
    return {"ran": True, "steps": steps, "seconds": round(seconds, 3), "matches_reference": bool(same),
            "spikes": int(sum(float(s.sum()) for s in lava_spikes))}


def diagnose(run_lava: bool = True) -> dict:
    ok, why = lava_imports()
    report: dict = {"versions": versions(), "lava_import": {"ok": ok, "detail": why}}
    if ok and run_lava:
        try:
            report["lava_fixed_pt_run"] = lava_smoke()
        except Exception as exc:  # report, don't crash: doctor's job is to say what is wrong
            report["lava_fixed_pt_run"] = {"ran": False, "detail": f"{type(exc).__name__}: {exc}"}
    report["healthy"] = bool(ok and (not run_lava or (report["lava_fixed_pt_run"].get("ran") and
                                                       report["lava_fixed_pt_run"].get("matches_reference"))))
    return report


def format_report(report: dict) -> str:
    lines = ["package            version", "-----------------  ------------"]
    for name, ver in report["versions"].items():
        lines.append(f"{name:<17}  {ver or 'NOT INSTALLED'}")
    lines.append("")
    li = report["lava_import"]
    lines.append(f"lava import:       {'ok' if li['ok'] else 'FAILED: ' + li['detail']}")
    run = report.get("lava_fixed_pt_run")
    if run is not None:
        if run.get("ran"):
            verdict = "spikes equal the reference simulator" if run["matches_reference"] else \
                "SPIKES DIFFER from the reference simulator"
            lines.append(f"lava fixed_pt run: ok ({run['steps']} steps in {run['seconds']} s; {verdict})")
        else:
            lines.append(f"lava fixed_pt run: FAILED: {run['detail']}")
    lines.append(f"healthy:           {'yes' if report['healthy'] else 'NO'}")
    return "\n".join(lines)
