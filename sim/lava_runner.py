"""The former import path of the Lava loader; nothing else lives here.

The one-network-per-sample ``LavaRunner`` is gone: a fixed-point plan runs on Lava through
:class:`stft_neuro.sim.lava_session.LavaSession` (one sample is a session of batch 1), and Lava is
loaded, and its runtimes started and stopped, by ``sim/lava_runtime.py``. The names below delegate
to it for the modules that still import them from here (``converters/netx_out.py``,
``stft_neuro/simulate.py``, ``tests/conftest.py``).
"""
from __future__ import annotations

from typing import Any

from stft_neuro.sim.lava_runtime import LavaUnavailableError, force_stop, lava_available, load

__all__ = ["LavaUnavailableError", "force_stop", "lava_available"]


def _lava() -> dict[str, Any]:
    """:func:`stft_neuro.sim.lava_runtime.load`'s namespace as a dict (``lv["Injector"]``)."""
    return vars(load())
