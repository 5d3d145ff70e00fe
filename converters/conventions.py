"""The one rule that turns NIR's continuous-time equations into per-step updates.

NIR (nir 1.0.8) writes neurons as ODEs (``tau dv/dt = (v_leak - v) + R I``) and stores no
timestep. Every simulator of this project (``converters.nir_torch``, ``converters.nir_lava``) takes
its per-step constants from this module, and nowhere else is a ``1 - dt/tau`` written.

Timestep ``dt`` (seconds):
    ``--dt`` given by the user wins; else a ``dt`` entry in the graph's metadata (the convention
    this project writes); else :data:`DEFAULT_DT` = 1e-4 s, the convention of snnTorch's exporter
    and of the NIR paper. :func:`resolve_dt` says which one was used.

Forward Euler, synaptic current first (the order snnTorch's ``Synaptic`` and Lava's ``LIF`` use;
textbook explicit Euler, which drives ``v`` with the previous current, does not reproduce them)::

    I[t] = (1 - dt/tau_syn) * I[t-1] + (w_in * dt/tau_syn) * x[t]          CubaLIF, CubaLI
    v[t] = (1 - dt/tau_mem) * v[t-1] + (r * dt/tau_mem) * I[t] + v_leak * dt/tau_mem
    z[t] = v[t] > v_threshold ;  v[t] = v_reset where z[t]                 LIF, CubaLIF

LIF and LI have no synaptic current: ``I[t] = x[t]``. IF and I have no time constant at all
(``dv/dt = R I``), and the tools that write them disagree on R: Sinabs and Norse write ``r = 1``
for a neuron that adds its input each step (Norse's importer ignores ``r``; the NIR SpiNNaker2
converter uses ``r`` as a per-step factor), SpikingJelly writes ``r = 1/dt`` for the same neuron.
Here ``v[t] = v[t-1] + r * x[t]`` (``r`` per step, :func:`if_gain`), except that an IF/I whose ``r``
is ``1/dt`` for every neuron is read as SpikingJelly means it, ``v += r * dt * x`` (a warning says
so, ``converters.nir_in``). Both readings give ``v += x`` for the files those tools write.

Delay nodes delay by ``round(delay / dt)`` steps (an error if that is not an integer to 1e-6).

Constants are computed in float64 and then cast to the simulation dtype. For files written by
snnTorch (float32 ``tau = dt/(1-beta)``) the decay recovered this way can differ from the original
``beta`` by one float32 unit in the last place: the map beta -> tau is not injective in float32, so no
reader can recover beta exactly. Membranes then agree to ~1e-7 relative, spikes exactly unless a
membrane lands within that distance of its threshold.

Euler is stable for ``dt/tau <= 1`` (decay in [0, 1)); ``dt/tau > 1`` makes the decay negative
(the state oscillates), ``> 2`` makes it grow without bound. Such parameters are simulated as
written, with a warning (``converters.nir_in``).
"""
from __future__ import annotations

import numpy as np

DEFAULT_DT = 1e-4
"""Seconds per step when neither ``--dt`` nor the graph's metadata give one (snnTorch, NIR paper)."""


def resolve_dt(cli_dt: float | None, metadata: dict | None) -> tuple[float, str]:
    """``(dt, source)``: the timestep in seconds and where it came from.

    ``source`` is ``"--dt"``, ``"graph metadata"`` or ``"default, the snnTorch/NIR convention"``.
    Raises ``ValueError`` for a dt that is not a finite positive number.
    """
    if cli_dt is not None:
        dt, source = cli_dt, "--dt"
    elif metadata and "dt" in metadata:
        raw = np.asarray(metadata["dt"])
        if raw.size != 1:
            raise ValueError(f"graph metadata dt must be one number, got shape {raw.shape}")
        dt, source = float(raw.reshape(())), "graph metadata"
    else:
        dt, source = DEFAULT_DT, "default, the snnTorch/NIR convention"
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0 seconds, got {dt} (from {source})")
    return float(dt), source


def decay(dt: float, tau: np.ndarray) -> np.ndarray:
    """Per-step retention ``1 - dt/tau`` of a state with time constant ``tau`` (float64)."""
    return 1.0 - dt / np.asarray(tau, dtype=np.float64)


def rate(dt: float, tau: np.ndarray) -> np.ndarray:
    """``dt/tau``: Lava's ``du``/``dv`` (decay fraction per step), float64."""
    return dt / np.asarray(tau, dtype=np.float64)


def membrane_gain(dt: float, tau_mem: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Input current -> membrane per step: ``r * dt / tau_mem`` (float64)."""
    return np.asarray(r, dtype=np.float64) * dt / np.asarray(tau_mem, dtype=np.float64)


def synapse_gain(dt: float, tau_syn: np.ndarray, w_in: np.ndarray) -> np.ndarray:
    """Input -> synaptic current per step: ``w_in * dt / tau_syn`` (float64)."""
    return np.asarray(w_in, dtype=np.float64) * dt / np.asarray(tau_syn, dtype=np.float64)


def leak_drive(dt: float, tau_mem: np.ndarray, v_leak: np.ndarray) -> np.ndarray:
    """Constant membrane drive per step from the leak voltage: ``v_leak * dt / tau_mem``."""
    return np.asarray(v_leak, dtype=np.float64) * dt / np.asarray(tau_mem, dtype=np.float64)


def if_gain(dt: float, r: np.ndarray) -> tuple[np.ndarray, bool]:
    """Per-step input gain of an IF/I node: ``(gain, dt_scaled)``.

    ``r`` itself (per step), or ``r * dt`` when ``r == 1/dt`` for every neuron (SpikingJelly's
    convention for ``v += x``); ``dt_scaled`` says which (module doc)."""
    r = np.asarray(r, dtype=np.float64)
    if r.size and np.allclose(r * dt, 1.0, rtol=1e-6, atol=0.0) and not np.allclose(r, 1.0):
        return r * dt, True
    return r, False


def delay_steps(delay: np.ndarray, dt: float) -> np.ndarray:
    """``delay`` (seconds) -> whole steps; ``ValueError`` if not a multiple of ``dt`` or negative."""
    steps = np.asarray(delay, dtype=np.float64) / dt
    k = np.rint(steps)
    if np.any(np.abs(steps - k) > 1e-6 * np.maximum(1.0, np.abs(steps))) or np.any(k < 0):
        raise ValueError(f"delays must be non-negative multiples of dt={dt} s "
                         f"(got {np.unique(np.asarray(delay))[:4]} s)")
    return k.astype(np.int64)


def unstable_rates(dt: float, **taus: np.ndarray) -> list[str]:
    """Names of the time constants for which forward Euler is unstable (``dt/tau > 1``)."""
    return [name for name, tau in taus.items() if np.any(rate(dt, tau) > 1.0)]
