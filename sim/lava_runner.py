"""Run a deployment plan's fixed-point network in Lava's CPU simulator (``Loihi2SimCfg``, ``fixed_pt``), step by step.

The only module of the project that imports Lava, and only inside functions: everything else runs
without it. :class:`LavaRunner` implements the step contract of ``stft_neuro/contract.py``.

What it builds per sample (Lava processes, all ``fixed_pt`` bit-accurate models)::

    Injector(n_in) -> Dense_0 (graded) -> LIF_0 -> Dense_1 -> LIF_1 -> ... -> LIF_{L-1}
                                            |                    |
                                       Extractor_0          Extractor_1 ...
    [Injector(1) -> LIF_l.theta_in]   only when theta is given: ThetaLIF, see below

- Host I/O per step with ``Injector``/``Extractor``, ``run(RunSteps(T, blocking=False))`` and one
  send/receive per step (``Var.set``/``get`` per step is ~10x slower). Their process models are
  untagged, hence ``exception_proc_model_map``.
- Lava's ``PyLoihiInjectorModel`` sends float64; a fixed_pt Dense given float payloads fails at its
  integer shift. :class:`_IntInjectorModel` sends int32 instead (the payloads are integers anyway).
- Threshold modulation: Lava's LIF has no threshold input. ``ThetaLIF`` is an ``LIF`` process with
  one more ``InPort`` ``theta_in`` (shape (1,)); its model is ``PyLifModelBitAcc`` with
  ``effective_vth = (vth + theta_t) << 6`` recomputed every step, nothing else changed. With
  ``theta=None`` the stock ``LIF`` is used.
- The batch runs sample after sample (each sample is one Lava network and one runtime: ~0.5 s
  start-up each). The runtime is always stopped in ``finally`` (also on KeyboardInterrupt).
- ``state`` in and out: u, v are set through the processes' initial values and read with
  ``Var.get`` after the run; the Dense ``a_buff`` likewise.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stft_neuro.contract import ChipState
from stft_neuro.hw_targets.loihi2.plan import DeploymentPlan

_LAVA: dict[str, Any] = {}


class LavaUnavailableError(ImportError):
    """Lava (lava-nc, mended for Python 3.11) is not importable."""


def lava_available() -> bool:
    try:
        _lava()
    except LavaUnavailableError:
        return False
    return True


def _lava() -> dict[str, Any]:
    """Import Lava once and define the two custom classes (module-level, so they pickle by name)."""
    if _LAVA:
        return _LAVA
    import multiprocessing as mp

    # Lava calls ``mp.set_start_method('fork')`` (no ``force``) at import, which raises "context has
    # already been set" once anything has fixed the start method (tqdm's lock does, and so does
    # NeuroBench): where it is already 'fork', unset it so that Lava sets the same method again.
    if mp.get_start_method(allow_none=True) == "fork":
        mp.set_start_method(None, force=True)
    try:
        from lava.magma.core.decorator import implements, requires, tag
        from lava.magma.core.model.py.ports import PyInPort, PyOutPort
        from lava.magma.core.model.py.type import LavaPyType
        from lava.magma.core.process.ports.ports import InPort
        from lava.magma.core.resources import CPU
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
        from lava.proc.dense.process import Dense
        from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
        from lava.proc.io.injector import Injector, PyLoihiInjectorModel
        from lava.proc.lif.models import PyLifModelBitAcc
        from lava.proc.lif.process import LIF
    except Exception as exc:  # ImportError, or the Python 3.11 dataclass error of an unmended Lava
        raise LavaUnavailableError(
            "stft_neuro.sim.lava_runner needs lava-nc 0.10.0 mended for Python 3.11 "
            f"(see README / tools/mend_lava.py); importing it failed: {exc!r}") from exc

    class ThetaLIF(LIF):
        """Lava's LIF with a threshold-modulation input: spikes where ``v > (vth + theta) << 6``."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.theta_in = InPort(shape=(1,))

    class PyThetaLifModelBitAcc(PyLifModelBitAcc):
        """``PyLifModelBitAcc`` whose threshold mantissa is ``vth + theta_t`` at every step."""

        theta_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)

        def run_spk(self) -> None:
            theta = int(self.theta_in.recv()[0])
            self.effective_vth = np.left_shift(np.int64(self.vth) + theta, self.vth_shift)
            self.isthrscaled = True  # keep the parent from overwriting it
            super().run_spk()

    # ``implements`` refuses a subclass of a model of another process; the attribute is reset first.
    PyThetaLifModelBitAcc.implements_process = None
    tag("fixed_pt")(requires(CPU)(implements(proc=ThetaLIF, protocol=LoihiProtocol)(
        PyThetaLifModelBitAcc)))

    class _IntInjectorModel(PyLoihiInjectorModel):
        """Lava's Injector model, sending int32 payloads (fixed_pt Dense needs integers)."""

        out_port: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    for cls in (ThetaLIF, PyThetaLifModelBitAcc, _IntInjectorModel):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    _LAVA.update(RunSteps=RunSteps, Loihi2SimCfg=Loihi2SimCfg, Dense=Dense, LIF=LIF,
                 ThetaLIF=ThetaLIF, PyThetaLifModelBitAcc=PyThetaLifModelBitAcc,
                 Injector=Injector, IntInjectorModel=_IntInjectorModel,
                 Extractor=Extractor, PyLoihiExtractorModel=PyLoihiExtractorModel)
    return _LAVA


@dataclass
class LavaTiming:
    """Wall-clock seconds of the last :meth:`LavaRunner.run`, summed over samples."""

    build_s: float = 0.0     # process creation + compile + runtime start
    steps_s: float = 0.0     # the per-step send/receive loop only
    teardown_s: float = 0.0  # reading state back + stopping the runtime
    samples: int = 0
    steps: int = 0


class LavaRunner:
    """The step contract on Lava's ``fixed_pt`` CPU simulator, one sample at a time.

    Args:
        plan: the deployment plan; payloads and thetas are checked against it
            (``plan.check_payload`` / ``plan.check_theta``) before Lava starts.
        read_state: read u, v and ``a_buff`` back after each run (``Var.get``, a few ms per
            variable); if False the returned state is None (benchmarks).
    """

    def __init__(self, plan: DeploymentPlan, *, read_state: bool = True) -> None:
        if not isinstance(plan, DeploymentPlan):
            raise TypeError(f"LavaRunner takes a DeploymentPlan, got {type(plan).__name__}")
        self.plan = plan
        self.network = plan.network
        self.read_state = read_state
        self.timing = LavaTiming()

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.network.sizes

    def reset(self, batch: int) -> ChipState:
        z = tuple(torch.zeros(batch, n, dtype=torch.float64) for n in self.network.sizes[1:])
        return ChipState(u=z, v=tuple(t.clone() for t in z), a=tuple(t.clone() for t in z))

    def step(self, x_t: Tensor, theta_t: Tensor | None, state: ChipState
             ) -> tuple[tuple[Tensor, ...], ChipState]:
        self.plan.check_payload(x_t)  # checked as sent, so errors name (B, n) indices
        if theta_t is not None:
            self.plan.check_theta(theta_t)
        spikes, state = self.run(x_t[None], None if theta_t is None else theta_t[None], state)
        return tuple(s[0] for s in spikes), state

    def run(self, x: Tensor, theta: Tensor | None = None, state: ChipState | None = None
            ) -> tuple[tuple[Tensor, ...], ChipState | None]:
        """``x``: ``(T, B, n_in)`` integer payloads; ``theta``: ``(T, B, L)`` integers or None.

        Returns float32 spikes ``(T, B, n_l)`` per layer and the final state (float64 tensors of
        integers; None if ``read_state`` is False).
        """
        x, theta = self.plan.check_run(x, theta)
        T, B = int(x.shape[0]), int(x.shape[1])
        xs = _as_int_array(x)
        th = None if theta is None else _as_int_array(theta)
        self.timing = LavaTiming()
        out = [np.zeros((T, B, n), dtype=np.float32) for n in self.network.sizes[1:]]
        states = []
        for b in range(B):
            init = None if state is None else tuple(
                tuple(np.asarray(t[b].detach().cpu().numpy(), dtype=np.int64) for t in field)
                for field in (state.u, state.v, state.a))
            spikes_b, state_b = self._run_sample(xs[:, b], None if th is None else th[:, b], init)
            for l, s in enumerate(spikes_b):
                out[l][:, b] = s
            states.append(state_b)
        spikes = tuple(torch.from_numpy(o) for o in out)
        if not self.read_state:
            return spikes, None
        fields = []
        for k in range(3):
            fields.append(tuple(torch.from_numpy(np.stack([st[k][l] for st in states]))
                                .to(torch.float64) for l in range(len(self.network.layers))))
        return spikes, ChipState(*fields)

    def _run_sample(self, x: np.ndarray, theta: np.ndarray | None,
                    init: tuple | None) -> tuple[list[np.ndarray], tuple | None]:
        """One sample: ``x`` ``(T, n_in)``, ``theta`` ``(T, L)``; returns spikes ``[(T, n_l)]``."""
        lv = _lava()
        t0 = time.perf_counter()
        T = x.shape[0]
        layers = self.network.layers
        injector = lv["Injector"](shape=(self.network.n_in,))
        denses, lifs, extractors, th_injectors = [], [], [], []
        src = injector.out_port
        for l, layer in enumerate(layers):
            dense = lv["Dense"](weights=np.asarray(layer.weight, dtype=np.int64),
                                weight_exp=int(layer.weight_exp),
                                num_message_bits=int(layer.num_message_bits), name=f"dense_{l}")
            lif_kwargs = dict(shape=(layer.n_out,), du=int(layer.du), dv=int(layer.dv),
                              vth=int(layer.vth), bias_mant=np.asarray(layer.bias_mant),
                              bias_exp=int(layer.bias_exp), name=layer.name)
            if init is not None:
                lif_kwargs.update(u=init[0][l], v=init[1][l])
                dense.a_buff.init = np.asarray(init[2][l], dtype=np.int64)
            lif = (lv["LIF"] if theta is None else lv["ThetaLIF"])(**lif_kwargs)
            src.connect(dense.s_in)
            dense.a_out.connect(lif.a_in)
            ext = lv["Extractor"](shape=(layer.n_out,))
            lif.s_out.connect(ext.in_port)
            if theta is not None:
                thi = lv["Injector"](shape=(1,))
                thi.out_port.connect(lif.theta_in)
                th_injectors.append(thi)
            denses.append(dense)
            lifs.append(lif)
            extractors.append(ext)
            src = lif.s_out
        exc = {lv["Injector"]: lv["IntInjectorModel"], lv["Extractor"]: lv["PyLoihiExtractorModel"]}
        if theta is not None:
            exc[lv["ThetaLIF"]] = lv["PyThetaLifModelBitAcc"]
        cfg = lv["Loihi2SimCfg"](select_tag="fixed_pt", exception_proc_model_map=exc)
        spikes = [np.zeros((T, layer.n_out), dtype=np.float32) for layer in layers]
        state = None
        io = {"sent": 0, "sent_theta": [0] * len(th_injectors), "received": [0] * len(extractors)}
        t1 = t2 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Lava's compiler scans this module's folder for models of ThetaLIF and warns about
                # every file it cannot import by its bare name; the model is given explicitly.
                warnings.filterwarnings("ignore", message="Cannot import module",
                                        category=UserWarning)
                lifs[-1].run(condition=lv["RunSteps"](num_steps=T, blocking=False), run_cfg=cfg)
            t1 = time.perf_counter()
            for t in range(T):
                injector.send(x[t].astype(np.float64))
                io["sent"] += 1
                for l, thi in enumerate(th_injectors):
                    thi.send(theta[t, l:l + 1].astype(np.float64))
                    io["sent_theta"][l] += 1
                for l, ext in enumerate(extractors):
                    spikes[l][t] = ext.receive()
                    io["received"][l] += 1
            t2 = time.perf_counter()
            lifs[-1].wait()
            if self.read_state:
                state = (tuple(np.asarray(p.u.get(), dtype=np.int64) for p in lifs),
                         tuple(np.asarray(p.v.get(), dtype=np.int64) for p in lifs),
                         tuple(np.asarray(d.a_buff.get(), dtype=np.int64) for d in denses))
        finally:
            _shutdown(lifs[-1], injector, th_injectors, extractors, T, io)
        t3 = time.perf_counter()
        self.timing.build_s += t1 - t0
        self.timing.steps_s += t2 - t1
        self.timing.teardown_s += t3 - t2
        self.timing.samples += 1
        self.timing.steps += T
        return spikes, state


def _shutdown(proc: Any, injector: Any, th_injectors: list, extractors: list, steps: int,
              io: dict) -> None:
    """Stop ``proc``'s runtime, if one was created. A run interrupted mid-way (exception,
    KeyboardInterrupt) is first fed zeros for its remaining steps and its outputs drained, so that
    no process model is left blocked on an empty Injector or a full Extractor and stopping cannot
    hang."""
    runtime = getattr(proc, "runtime", None)
    if runtime is None:
        return
    try:
        if getattr(runtime, "_is_running", False):
            for _ in range(steps - io["sent"]):
                injector.send(np.zeros(injector.out_port.shape))
            for l, thi in enumerate(th_injectors):
                for _ in range(steps - io["sent_theta"][l]):
                    thi.send(np.zeros(1))
            for l, ext in enumerate(extractors):
                for _ in range(steps - io["received"][l]):
                    ext.receive()
            proc.wait()
    finally:
        proc.stop()


def force_stop(runtime: Any) -> None:
    """Terminate a Lava runtime's process models and managers without talking to them, and release
    Lava's shared memory (after an interruption or a dead/failed model, when draining could block).
    The one copy: the hybrid bridge (``sim/lava_session.py``) and NIR graphs on Lava
    (``converters/nir_lava.py``) both stop their runtimes with it."""
    import multiprocessing as mp

    infra = getattr(runtime, "_messaging_infrastructure", None)
    actors = list(getattr(infra, "actors", []) or [])
    for a in actors:
        if a.is_alive():
            a.terminate()
    for a in actors:
        mp.Process.join(a, 5.0)
        if a.is_alive():
            a.kill()
            mp.Process.join(a, 5.0)
    try:
        if infra is not None and getattr(infra, "smm", None) is not None:
            infra.smm.shutdown()
    finally:
        wd = getattr(runtime, "_watchdog_manager", None)
        for proc_name in ("_lm", "_sm"):
            p = getattr(wd, proc_name, None)
            if p is not None and p.is_alive():
                p.terminate()
                p.join(5.0)
        mgr = getattr(wd, "_mp_manager", None)
        if mgr is not None:
            mgr.shutdown()
            wd._mp_manager = None
        runtime._is_running = runtime._is_started = False  # keep __del__ from calling stop()


def _as_int_array(t: Tensor | np.ndarray) -> np.ndarray:
    """Checked integer payloads / thetas (``plan.check_*`` ran first) as int64 numpy."""
    a = t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)
    return np.rint(a).astype(np.int64)
