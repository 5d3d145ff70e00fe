"""Bit widths and limits of Loihi 2's LIF neuron and Dense synapse, as Lava's ``fixed_pt`` models define them.

Every number used by quantization, the integer arithmetic, the simulators and the design rules is
defined here exactly once, with its source. Sources (paths relative to ``site-packages/lava``,
lava-nc 0.10.0):

- ``LIF``   = ``proc/lif/models.py`` (``AbstractPyLifModelFixed`` / ``PyLifModelBitAcc``)
- ``DENSE`` = ``proc/dense/models.py`` (``AbstractPyDenseModelBitAcc``) and ``proc/dense/process.py``
- ``WU``    = ``utils/weightutils.py`` (``determine_sign_mode``, ``clip_weights``, ``truncate_weights``)
- ``Davies 2018`` = M. Davies et al., "Loihi: A Neuromorphic Manycore Processor with On-Chip
  Learning", IEEE Micro 38(1), 2018.
- ``Loihi 2 brief`` = Intel, "Taking Neuromorphic Computing to the Next Level with Loihi 2",
  Technology Brief, 2021.

Notes on what Lava's Python ``fixed_pt`` simulation enforces (measured by reading the source):

- ``LavaPyType(..., precision=p)`` is *not* enforced: the builder only stores it as ``_<name>_p``
  (``magma/compiler/builders/py_builder.py`` l.423; for ports the line is commented out, l.307).
  What is enforced is the numpy dtype: variables are allocated with it (``var[:] = value``) and
  every channel casts what is sent into the *sending* port's dtype (``pypychannel.py`` l.142).
- So the Dense output (``a_out``, declared 16-bit) travels as int32 and is **not** truncated to 16
  bits; the LIF's ``a_in`` is ``np.zeros(int16) + int32`` = int32 (``ports.py`` l.346). Keeping
  ``|a_out| < 2**15`` is a hardware design rule (``A_OUT_BITS``), not something the simulator does.
- Graded spike payloads (``num_message_bits``) are not truncated either; the Dense multiplies the
  received integers as they are. Loihi 2 hardware carries at most ``MESSAGE_BITS_MAX`` bits.
"""
from __future__ import annotations

# --------------------------------------------------------------------------------------------
# Synapse (Dense)
# --------------------------------------------------------------------------------------------

#: Weight bits before the sign mode is applied. ``DENSE`` l.83 (``num_weight_bits`` default 8) and
#: l.87 (``clip_weights(..., num_bits=8)``).
WEIGHT_BITS: int = 8

#: Weight range, per sign mode, that Lava's Dense lets through (``WU`` ``clip_weights`` l.283-284,
#: ``truncate_weights`` l.236-239). ``EXCITATORY`` (all weights >= 0): ``[0, 255]``.
#: ``INHIBITORY`` (all <= 0): ``[-255, 0]``. ``MIXED``: clipped to ``[-256, 255]``, then the lowest
#: bit is truncated (``(w >> 1) << 1``, floor), so only *even* values ``[-256, 254]`` survive: an
#: 8-bit signed mantissa ``m`` in ``[-128, 127]`` with weight ``2 * m``.
WEIGHT_MAX_UNSIGNED: int = 2 ** WEIGHT_BITS - 1          # 255
WEIGHT_MIN_MIXED: int = -(2 ** WEIGHT_BITS)              # -256
WEIGHT_MAX_MIXED: int = 2 ** WEIGHT_BITS - 2             # 254 (255 truncated to even)
#: Mixed-sign weights are multiples of this (the truncated bit). ``WU`` l.236 (``mixed_flag``).
WEIGHT_MIXED_STEP: int = 2
#: Signed weight mantissa of mixed-sign weights, ``weight = WEIGHT_MIXED_STEP * mantissa``.
WEIGHT_MANT_MIN: int = -(2 ** (WEIGHT_BITS - 1))         # -128
WEIGHT_MANT_MAX: int = 2 ** (WEIGHT_BITS - 1) - 1        # 127

#: Weight exponent: the Dense output is ``(W @ s) << weight_exp`` (right shift, i.e. floor, for a
#: negative exponent), ``DENSE`` l.103-107. Lava does not limit it. ``[-8, 7]`` is the range of
#: NxSDK's ``weightExponent`` on Loihi 1 (a 4-bit signed field); no public Loihi 2 document states
#: its range, so this is the conservative assumption of this project.
WEIGHT_EXP_MIN: int = -8
WEIGHT_EXP_MAX: int = 7

#: Dense output (``a_out``/``a_buff``) precision declared by Lava: ``LavaPyType(..., np.int32,
#: precision=16)``, ``DENSE`` l.64-65, and the LIF's ``a_in`` ``np.int16, precision=16`` (``LIF``
#: l.78). Not enforced in Python (see module notes): a design rule, signed 16 bits.
A_OUT_BITS: int = 16
A_OUT_MAX: int = 2 ** (A_OUT_BITS - 1) - 1
A_OUT_MIN: int = -(2 ** (A_OUT_BITS - 1))

#: Dense accumulation dtype in Lava's Python model: int32 weights dot int32 spikes (``DENSE`` l.68,
#: l.99): partial sums wrap silently beyond 32 bits. Backends here require that they never do.
ACCUM_BITS: int = 32

#: ``num_message_bits`` is a 5-bit field (``DENSE`` l.69 ``precision=5``); 0 means binary spikes.
#: Loihi 2 carries graded spikes with payloads of up to 24 bits (Loihi 2 brief, "graded spikes";
#: Lava's graded neurons are 24-bit, ``proc/graded/process.py`` l.167).
MESSAGE_BITS_MAX: int = 24
#: Bits of the host's graded input currents (signed), chosen by this project (<= 8 keeps the first
#: layer's accumulation small; see ``quantize.py``).
INPUT_BITS_MAX: int = 8

# --------------------------------------------------------------------------------------------
# Neuron (LIF)
# --------------------------------------------------------------------------------------------

#: u and v are 24-bit signed. ``LIF`` l.80-81 (``precision=24``) and l.101-102.
UV_BITS: int = 24
#: ``max_uv_val`` = 2**23, ``LIF`` l.102.
UV_MAX_VAL: int = 2 ** (UV_BITS - 1)
#: u wraps (once) into ``(-2**23, 2**23]``: ``u > 2**23 -> u - 2**24``; ``u <= -2**23 -> u + 2**24``
#: (``LIF`` l.161-170; note the asymmetric bounds, exactly as written there).
U_WRAP: int = 2 * UV_MAX_VAL
#: v is clipped (saturates) to ``[-(2**23) + 1, 2**23 - 1]``, ``LIF`` l.176-177, l.186.
V_MIN: int = -UV_MAX_VAL + 1
V_MAX: int = UV_MAX_VAL - 1

#: Decays du, dv are unsigned 12-bit: ``[0, 4095]``. ``LIF`` l.82-83, docstring l.252-253.
DECAY_BITS: int = 12
DECAY_MAX: int = 2 ** DECAY_BITS - 1
#: ``decay_shift`` = 12, ``decay_unity`` = 4096. ``LIF`` l.104-105.
DECAY_SHIFT: int = DECAY_BITS
DECAY_UNITY: int = 2 ** DECAY_SHIFT
#: u decays by ``(4096 - (du + ds_offset))``, v by ``(4096 - (dv + dm_offset))``. ``LIF`` l.94-95,
#: l.145, l.174. So du = 4095 zeroes u every step, and dv = 0 makes v a perfect integrator.
DS_OFFSET: int = 1
DM_OFFSET: int = 0

#: Threshold mantissa: unsigned 17-bit, ``[0, 131071]``. ``LIF`` l.262, docstring l.257.
VTH_BITS: int = 17
VTH_MAX: int = 2 ** VTH_BITS - 1
#: The threshold is compared as ``v > vth << 6``. ``LIF`` l.107, l.273, l.278.
VTH_SHIFT: int = 6
#: The synaptic input is added to u as ``a_in << 6``. ``LIF`` l.108, l.155.
ACT_SHIFT: int = 6

#: Bias mantissa: signed 13-bit, ``[-4096, 4095]``. ``LIF`` l.84 (stored as int16), l.254-255.
BIAS_MANT_BITS: int = 13
BIAS_MANT_MIN: int = -(2 ** (BIAS_MANT_BITS - 1))
BIAS_MANT_MAX: int = 2 ** (BIAS_MANT_BITS - 1) - 1
#: Bias exponent: unsigned 3-bit, ``[0, 7]``. ``LIF`` l.85, l.256. The bias is
#: ``bias_mant << bias_exp`` (``LIF`` l.117-121) and is added to v *without* the ``<< 6`` shift.
BIAS_EXP_BITS: int = 3
BIAS_EXP_MIN: int = 0
BIAS_EXP_MAX: int = 2 ** BIAS_EXP_BITS - 1

#: Voltage reset value after a spike (hard reset to zero). ``LIF`` l.192.
V_RESET: int = 0

# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

#: Each Dense sends at step t what it accumulated at step t-1 (``a_buff``). ``DENSE`` l.93-96.
DENSE_DELAY_STEPS: int = 1
