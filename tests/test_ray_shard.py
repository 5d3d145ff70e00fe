"""Sharded runs on Ray (stft_neuro/shard.py): ``simulate --ray`` and ``bench_quality.py run --ray``.

On a real local Ray with 2 workers (one per core here and on CI): the sharded simulation writes
byte-identical ``records.npz`` and ``plan.safetensors`` and the same results.json (but for
``timings`` and ``ray``) as the single-process run, for the reference and the Lava backend; a worker
killed for real while its Lava runtime runs is retried and the result is still identical; a shard
that fails on every attempt ends the run with one line naming it, and no output; no Lava process
and no /dev/shm segment is left. Without Ray, ``--ray`` is one line. The sweep gives the same rows
on Ray as in one process. Faults are injected by replacing ``simulate.sharded.shard_task`` in the driver
with a wrapper that Ray ships to the workers (the only stand-in here; Ray and Lava are real).
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from stft_neuro import simulate as sim_mod
from stft_neuro.simulate import sharded as sharded_mod
from stft_neuro.cli import main

from test_cli import TINY, _sets
from test_lava_session import _shm

FILES = ("records.npz", "plan.safetensors")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    run, bundle = root / "run", root / "bundle"
    assert main(["train", "--json", "--out", str(run), *_sets(*TINY)]) == 0
    assert main(["export", "--json", "--checkpoint", str(run), "--target", "onnx", "--out", str(bundle)]) == 0
    return run, bundle


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs (2 workers) for the module; ``--ray`` reuses this connection."""
    ray = pytest.importorskip("ray")
    import logging
    ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def _run(tmp_path, bundle, name, *args) -> Path:
    out = tmp_path / name
    assert main(["simulate", "--json", "--bundle", str(bundle), "--out", str(out), "--batch", "8", *args]) == 0
    return out


def _comparable(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    return {k: v for k, v in res.items() if k not in ("timings", "ray")}


def _assert_identical(single: Path, sharded: Path) -> None:
    for name in FILES:
        assert (single / name).read_bytes() == (sharded / name).read_bytes(), f"{name} differs"
    assert _comparable(single) == _comparable(sharded)


def _worker_children(ray) -> set[int]:
    """Live children of every Ray worker process (Lava's process models would be there), except
    multiprocessing's resource tracker (it lives with its process by design)."""
    from test_simulate import _alive, _descendants
    workers = {p for p in _descendants(os.getpid())
               if Path(f"/proc/{p}/cmdline").is_file()
               and Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"ray::")}
    kids = set()
    for w in workers:
        for k in _descendants(w):
            try:
                cmd = Path(f"/proc/{k}/cmdline").read_bytes()
            except OSError:
                continue
            if _alive(k) and b"resource_tracker" not in cmd:
                kids.add(k)
    return kids


@pytest.mark.lava
@pytest.mark.parametrize("backend", ["reference", "lava"])
def test_sharded_simulate_is_byte_identical_to_one_process(tmp_path, tiny_bundle, local_ray, backend):
    _, bundle = tiny_bundle
    shm0 = _shm()
    single = _run(tmp_path, bundle, "single", "--backend", backend)
    sharded = _run(tmp_path, bundle, "sharded", "--backend", backend, "--ray")
    _assert_identical(single, sharded)
    ray_info = json.loads((sharded / "results.json").read_text())["ray"]
    assert ray_info["workers"] == 2 and len(ray_info["shards"]) > 2
    starts = [s["samples"][0] for s in ray_info["shards"]]
    assert starts == sorted(starts) and all(s % 8 == 0 for s in starts)  # whole batches, in order
    assert _worker_children(local_ray) == set(), "Lava process models left in a Ray worker"
    assert _shm() - shm0 == set(), "shared memory left in /dev/shm"


def _faulty(kind: str, target: int, marker: Path):
    """A stand-in for ``simulate.sharded.shard_task`` (shipped to the workers by value): shard ``target``
    is killed (``kill``: SIGKILL of its own worker while its Lava runtime runs, after one batch,
    the first time only) or raises on every attempt (``raise``)."""
    def task(job, shard):
        import os
        import signal

        import stft_neuro.simulate.sharded as sm

        if shard.index == target and kind == "raise":
            with open(marker, "a") as f:
                f.write("attempt\n")
            raise RuntimeError("injected fault")
        if shard.index == target and kind == "kill" and not marker.exists():
            run_batches = sm.run_batches

            def one_batch_then_die(model, onnx_host, backend, batches, *rest, **kw):
                run_batches(model, onnx_host, backend, [next(iter(batches))], *rest, **kw)
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

            sm.run_batches = one_batch_then_die
        return sm.shard_task(job, shard)  # the worker's module holds the real one

    return task


@pytest.mark.lava
def test_a_worker_killed_midway_is_retried_and_the_result_is_identical(tmp_path, tiny_bundle, local_ray,
                                                                       monkeypatch):
    _, bundle = tiny_bundle
    shm0 = _shm()
    single = _run(tmp_path, bundle, "single", "--backend", "lava")
    marker = tmp_path / "killed"
    monkeypatch.setattr(sharded_mod, "shard_task", _faulty("kill", 2, marker))
    sharded = _run(tmp_path, bundle, "sharded", "--backend", "lava", "--ray")
    assert marker.exists(), "the fault was not injected"
    killed = int(marker.read_text())
    from test_simulate import _alive
    assert not _alive(killed), "the worker was not killed"
    _assert_identical(single, sharded)
    shards = json.loads((sharded / "results.json").read_text())["ray"]["shards"]
    assert shards[2]["pid"] != killed  # the killed shard's result came from a new worker
    assert _worker_children(local_ray) == set(), "Lava process models left in a Ray worker"
    assert _shm() - shm0 == set(), "shared memory left in /dev/shm"


def test_a_shard_that_always_fails_is_named_in_one_line_and_nothing_is_written(
        tmp_path, tiny_bundle, local_ray, monkeypatch, capsys):
    _, bundle = tiny_bundle
    marker = tmp_path / "attempts"
    monkeypatch.setattr(sharded_mod, "shard_task", _faulty("raise", 1, marker))
    out = tmp_path / "sim"
    capsys.readouterr()
    code = main(["simulate", "--bundle", str(bundle), "--out", str(out), "--batch", "8",
                 "--backend", "reference", "--ray"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert re.search(r"shard 2 of \d+ \(samples \d+-\d+\) failed after 2 retries: "
                     r"RuntimeError: injected fault$", err), err
    assert marker.read_text().count("attempt") == 3  # the first try and 2 retries
    assert not out.exists() and not list(tmp_path.glob(".sim.partial-*"))


def test_without_ray_the_option_is_one_line(tmp_path, tiny_bundle, monkeypatch, capsys):
    _, bundle = tiny_bundle
    monkeypatch.setitem(sys.modules, "ray", None)  # what a checkout without the extra sees
    out = tmp_path / "sim"
    capsys.readouterr()
    code = main(["simulate", "--bundle", str(bundle), "--out", str(out), "--backend", "reference", "--ray"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "install stft-neuro[ray]" in err, err
    assert not out.exists()


def test_save_records_is_reproducible_and_readable(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "s": np.array(["x", "yz"])}
    sim_mod.save_records(tmp_path / "1.npz", arrays)
    sim_mod.save_records(tmp_path / "2.npz", arrays)
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    with np.load(tmp_path / "1.npz") as z:
        assert set(z.files) == {"a", "s"} and np.array_equal(z["a"], arrays["a"]) and list(z["s"]) == ["x", "yz"]


def test_sweep_on_ray_gives_the_rows_of_one_process(tmp_path, local_ray, monkeypatch, capsys):
    """bench_quality.py run --ray: one task per (variant, seed), the same rows (but for wall times)
    as the sweep in this process, in the same file format."""
    from stft_neuro import quality_sweep as bq

    sets = _sets(*TINY, "data.sizes=small", "train.epochs=1")
    rows = {}
    for mode, extra in (("local", []), ("ray", ["--ray"])):
        out = tmp_path / f"{mode}.json"
        monkeypatch.setattr(sys, "argv", ["bench_quality.py", "run", "--out", str(out), "--work",
                                          str(tmp_path / f"work_{mode}"), "--seeds", "0", "1",
                                          "--variants", bq.RIDGE_FAMILY, bq.REFERENCE, *sets, *extra])
        assert bq.main() == 0, capsys.readouterr().err
        data = json.loads(out.read_text())
        rows[mode] = {(name, seed): {k: v for k, v in row.items()
                                     if k not in ("seconds", "epoch_seconds", "finished", "median_samples_per_s")}
                      for name, by_seed in data["results"].items() for seed, row in by_seed.items()}
        assert len(rows[mode]) == 4 and "chance" in data
    assert rows["ray"] == rows["local"]
