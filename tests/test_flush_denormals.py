"""Training flushes subnormal floats to zero (they made CPU epochs 6x slower) and leaves the
caller's thread as it found it: torch's default, subnormals kept, also after an interrupted epoch."""
from __future__ import annotations

import pytest
import torch

from stft_neuro import config
from stft_neuro.data import load_benchmark
from stft_neuro.train import Trainer, flush_denormals

from tests.test_train_resume import TINY

SMALL_NORMAL = torch.finfo(torch.float32).tiny  # 1.18e-38: below it a float32 is subnormal


def _subnormal_product() -> float:
    """A product whose exact value is subnormal: 0 when flushing, about 1.2e-40 when not."""
    return (torch.tensor([SMALL_NORMAL]) * torch.tensor([0.01])).item()


@pytest.fixture(autouse=True)
def _flush_supported():
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals (torch.set_flush_denormal returned False)")


def test_subnormals_are_flushed_inside_and_kept_outside_even_when_nested() -> None:
    assert _subnormal_product() > 0.0
    with flush_denormals():
        assert _subnormal_product() == 0.0
        with flush_denormals():
            assert _subnormal_product() == 0.0
        assert _subnormal_product() == 0.0, "leaving the inner block must not switch flushing off"
    assert _subnormal_product() > 0.0


def test_a_training_run_stopped_mid_epoch_restores_the_threads_float_mode(tmp_path) -> None:
    cfg = config.load(overrides=TINY)
    bench = load_benchmark(cfg.data)
    seen: list[float] = []

    def stop(row):
        seen.append(_subnormal_product())  # called inside the training loop
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, bench, tmp_path / "run", on_epoch=stop).run()
    assert seen == [0.0], "the epoch hook runs inside training, where subnormals are flushed"
    assert _subnormal_product() > 0.0
