"""The project's Lava process models, and the Lava classes the project uses, in one namespace.

This module imports Lava at its top. Nothing imports it directly: :func:`stft_neuro.sim.lava_runtime.load`
imports it on first use (settling multiprocessing's start method first and turning an import
failure into one clear :class:`~stft_neuro.sim.lava_runtime.LavaUnavailableError`) and returns this
module. Its classes are ordinary module-level classes, so Lava's process models, forked from the
host process, find them by name.

The project's own processes and models (everything else is Lava's, unchanged):

- :class:`IntInjectorModel`: Lava's ``PyLoihiInjectorModel`` sending int32. Lava's own sends
  float64, which a ``fixed_pt`` synapse cannot shift; payloads are integers anyway.
- :class:`BatchThetaLIF` / :class:`PyBatchThetaLifModelBitAcc`: the one threshold-modulated LIF.
  Lava's LIF has no threshold input; this is Lava's ``LIF`` of ``B*n`` neurons (B samples of n)
  with one more port ``theta_in`` of shape ``(B*L + 1,)``: the host's thetas ``(B, L)`` of all L
  layers, row-major, then a reset flag. Layer ``l``'s model takes column ``l`` and gives sample
  ``b``'s n neurons the threshold mantissa ``vth + theta[b, l]``; a non-zero reset flag starts a new
  sequence from zero state (u = v = 0, that step's synaptic input dropped). With theta = 0 and no
  reset it is ``PyLifModelBitAcc`` exactly (tested against Lava's stock LIF).
- :class:`LIReadout` / :class:`PyLIReadoutModelBitAcc`: a leaky-integrator readout (NIR ``LI`` /
  ``CubaLI``) in fixed point: Lava's ``LIF`` process whose model is ``PyLifModelBitAcc``'s
  arithmetic (``subthr_dynamics``) with no threshold and no reset, and whose ``s_out`` sends the
  membrane ``v`` every step as int32 (a graded spike, as Loihi 2 can send it). ``vth`` is unused.
- :class:`VecLIF` / :class:`PyVecLifModelFloat`: Lava's LIF with per-neuron ``du``, ``dv``, ``vth``
  and reset voltage ``v_reset`` (``floating_pt`` only), for NIR graphs whose neurons differ within a
  layer (``converters/nir_lava.py``).
- :class:`ResetLIF` / :class:`PyResetLifModelBitAcc`: Lava's ``LIF`` whose spiking neurons reset
  to a per-neuron ``v_reset`` (24-bit integers) instead of 0: ``PyLifModelBitAcc`` with
  ``reset_voltage`` replaced (NIR ``v_reset != 0``; Loihi 2's neuron programs can do this, Lava's
  stock LIF cannot).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv.models import PyConvModelFixed
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
from lava.proc.io.injector import Injector, PyLoihiInjectorModel
from lava.proc.lif.models import AbstractPyLifModelFloat, PyLifModelBitAcc
from lava.proc.lif.process import LIF
from lava.proc.sparse.models import PySparseModelBitAcc
from lava.proc.sparse.process import Sparse

__all__ = ["RunSteps", "Loihi2SimCfg", "Dense", "Sparse", "PySparseModelBitAcc", "LIF",
           "PyLifModelBitAcc", "Injector", "PyLoihiInjectorModel", "IntInjectorModel", "Extractor",
           "PyLoihiExtractorModel", "BatchThetaLIF", "PyBatchThetaLifModelBitAcc", "VecLIF",
           "PyVecLifModelFloat", "LIReadout", "PyLIReadoutModelBitAcc", "ResetLIF",
           "PyResetLifModelBitAcc", "Conv", "PyConvModelFixed"]


class IntInjectorModel(PyLoihiInjectorModel):
    """Lava's Injector model, sending int32 payloads (a fixed_pt synapse needs integers)."""

    out_port: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)


class BatchThetaLIF(LIF):
    """Lava's LIF ``(B*n,)`` for B samples of n neurons with a threshold-modulation input
    ``theta_in`` ``(B*L + 1,)``: the thetas of all L layers (of which it uses column ``layer``),
    then the reset flag."""

    def __init__(self, *, layer: int, num_layers: int, batch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.theta_in = InPort(shape=(batch * num_layers + 1,))
        self.proc_params["theta_layer"] = int(layer)
        self.proc_params["theta_layers"] = int(num_layers)
        self.proc_params["theta_batch"] = int(batch)


@implements(proc=BatchThetaLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyBatchThetaLifModelBitAcc(PyLifModelBitAcc):
    """``PyLifModelBitAcc`` whose threshold mantissa is ``vth + theta_t[b, layer]`` for the neurons
    of sample ``b``, at every step, and which starts a new sequence from zero state when the last
    element of ``theta_in`` (the reset flag) is non-zero: u = v = 0 and the synaptic input of that
    step (the synapse's in-flight output of the previous sequence) is dropped, which is exactly the
    state of a freshly built network at its step 0.

    ``run_spk`` is ``AbstractPyLifModelFixed.run_spk`` (lava 0.10, lif/models.py) with those two
    additions, in the same order of operations."""

    implements_process = None  # inherited from PyLifModelBitAcc; ``implements`` refuses to overwrite it
    theta_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self) -> None:
        p = self.proc_params
        a_in_data = self.a_in.recv()
        raw = self.theta_in.recv()
        if raw[-1] != 0:                       # reset flag: first step of a new sequence
            a_in_data = np.zeros_like(a_in_data)
            self.u[:] = 0
            self.v[:] = 0
        theta = raw[:-1].reshape(p["theta_batch"], p["theta_layers"])
        n = self.v.shape[0] // p["theta_batch"]
        vth = np.int64(self.vth) + theta[:, p["theta_layer"]].astype(np.int64)    # (B,)
        self.scale_bias()
        self.effective_vth = np.left_shift(np.repeat(vth, n), self.vth_shift)      # (B*n,)
        self.isthrscaled = True
        self.subthr_dynamics(activation_in=a_in_data)
        self.s_out_buff = self.spiking_activation()
        self.reset_voltage(spike_vector=self.s_out_buff)
        self.s_out.send(self.s_out_buff)


class LIReadout(LIF):
    """Lava's ``LIF`` process run as a leaky-integrator readout (its model:
    :class:`PyLIReadoutModelBitAcc`): same variables and ports; ``s_out`` carries ``v``."""


@implements(proc=LIReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyLIReadoutModelBitAcc(PyLifModelBitAcc):
    """``PyLifModelBitAcc`` without threshold and reset: ``run_spk`` is
    ``AbstractPyLifModelFixed.run_spk`` (lava 0.10, lif/models.py) with ``spiking_activation`` and
    ``reset_voltage`` left out, and ``s_out`` sending the updated ``v`` (int32, 24-bit) instead of
    spikes."""

    implements_process = None  # inherited from PyLifModelBitAcc; ``implements`` refuses to overwrite it

    def run_spk(self) -> None:
        a_in_data = self.a_in.recv()
        self.scale_bias()
        self.subthr_dynamics(activation_in=a_in_data)
        self.s_out.send(np.asarray(self.v, dtype=np.int32).copy())


class ResetLIF(LIF):
    """Lava's ``LIF`` process with one more variable, ``v_reset`` (per neuron, integers): where
    its neurons spike, v becomes ``v_reset`` (model: :class:`PyResetLifModelBitAcc`)."""

    def __init__(self, *, v_reset: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.v_reset = Var(shape=kwargs["shape"], init=np.asarray(v_reset, dtype=np.int32))


@implements(proc=ResetLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyResetLifModelBitAcc(PyLifModelBitAcc):
    """``PyLifModelBitAcc`` resetting a spiking neuron's ``v`` to its ``v_reset`` (not 0)."""

    implements_process = None  # inherited from PyLifModelBitAcc; ``implements`` refuses to overwrite it
    v_reset: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def reset_voltage(self, spike_vector: np.ndarray) -> None:
        fired = spike_vector != 0
        self.v[fired] = self.v_reset[fired]


class VecLIF(AbstractProcess):
    """Lava's LIF with per-neuron ``du``, ``dv``, ``vth`` and ``v_reset`` (float model only)."""

    def __init__(self, *, shape: tuple[int, ...], du: np.ndarray, dv: np.ndarray,
                 vth: np.ndarray, bias_mant: np.ndarray, name: str | None = None,
                 v_reset: np.ndarray | None = None) -> None:
        super().__init__(shape=shape, name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.u = Var(shape=shape, init=0.0)
        self.v = Var(shape=shape, init=0.0)
        self.du = Var(shape=shape, init=du)
        self.dv = Var(shape=shape, init=dv)
        self.vth = Var(shape=shape, init=vth)
        self.bias_mant = Var(shape=shape, init=bias_mant)
        self.bias_exp = Var(shape=shape, init=0.0)
        self.v_reset = Var(shape=shape, init=np.zeros(shape) if v_reset is None else v_reset)


@implements(proc=VecLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyVecLifModelFloat(AbstractPyLifModelFloat):
    """Lava's ``AbstractPyLifModelFloat`` dynamics; ``du``, ``dv``, ``vth`` are vectors, and a
    spiking neuron's v becomes its ``v_reset`` (Lava's: 0)."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    du: np.ndarray = LavaPyType(np.ndarray, float)
    dv: np.ndarray = LavaPyType(np.ndarray, float)
    vth: np.ndarray = LavaPyType(np.ndarray, float)
    v_reset: np.ndarray = LavaPyType(np.ndarray, float)

    def spiking_activation(self) -> np.ndarray:
        return self.v > self.vth

    def reset_voltage(self, spike_vector: np.ndarray) -> None:
        self.v[spike_vector] = self.v_reset[spike_vector]
