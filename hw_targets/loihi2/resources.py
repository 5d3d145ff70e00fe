"""Loihi 2 resources: what one neuro core and one chip hold, as frozen data with sources.

The neuron and synapse *bit widths* live in ``constants.py``; this module holds the *capacity* of
the hardware: cores per chip, neurons per core, synaptic memory per core, and how much memory a
dense block of synapses takes. ``mapping.py`` places a network on it and ``rules.py`` checks it.

Sources (each number below names one of these):

- ``Loihi 2 brief``: Intel Labs, "Taking Neuromorphic Computing to the Next Level with Loihi 2",
  Technology Brief, 2021: 128 neuro cores and 6 embedded (Lakemont x86) processors per chip, up to
  1 million neurons and 120 million synapses per chip, graded spikes, flexible per-core memory.
- ``Orchard 2021``: G. Orchard et al., "Efficient Neuromorphic Signal Processing with Loihi 2",
  IEEE SiPS 2021 (arXiv 2111.03746): the same chip figures.
- ``WikiChip``: en.wikichip.org/wiki/intel/loihi_2: 1,048,576 neurons per chip, 8192 per core
  (1,048,576 / 128).
- ``Lava mapper``: lava-nc 0.10.0, ``lava/magma/compiler/subcompilers/constants.py``:
  ``NUM_VIRTUAL_CORES_L3 = 120``, the number of neuro cores per chip that Lava's mapper addresses
  for Loihi 2 (``N3`` in ``lava/magma/runtime/runtime_services/enums.py``, ``LoihiVersion.N3``);
  ``NUM_VIRTUAL_CORES_L2 = 128`` is Loihi 1 (``N2``).
- ``nengo-loihi``: nengo/nengo-loihi, ``nengo_loihi/block.py``: Loihi **1** core limits
  (``MAX_COMPARTMENTS = 1024``, ``MAX_IN_AXONS = 4096``, ``MAX_OUT_AXONS = 4096``,
  ``MAX_SYNAPSE_BITS = 1048576`` = 128 KiB) and its dense synapse encoding
  (``SynapseConfig.bits_per_axon``: weights in blocks of up to 64 with a 4 + 6 bit header, each
  block rounded up to a 64-bit memory word).

What is *not* published for Loihi 2, and what this model assumes instead:

- **Synaptic memory per core.** Intel publishes no split of a core's SRAM between synapses, neuron
  state, microcode and routing tables ("flexible allocation"); third-party summaries of the brief
  quote 192 KB per core in total, a press report 128 KB. ASSUMPTION: 128 KiB (1,048,576 bits) for
  synaptic weights, the Loihi 1 figure (nengo-loihi) and the smaller of the two reported numbers,
  so the mapping errs towards more cores.
- **Per-synapse overhead.** The Loihi 2 synapse encoding is unpublished. ASSUMPTION (default):
  a dense weight costs exactly its weight bits, no headers (``PLAIN_DENSE``). The documented Loihi 1
  encoding is available as ``NENGO_LOIHI1_DENSE`` for a conservative estimate.
- **Fan-in / fan-out (input / output axons per core).** Unpublished for Loihi 2 (Loihi 1: 4096 /
  4096, nengo-loihi). Not checked; the only fan-in limit applied is that one neuron's synapses must
  fit in one core's synaptic memory. Neuron state memory is not modelled either.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stft_neuro.hw_targets.loihi2.constants import WEIGHT_BITS

#: Where a number comes from: ``"published"`` (a document by Intel or a paper from Intel Labs),
#: ``"toolchain"`` (Lava's own source), ``"assumption"`` (chosen here; see the module docstring).
PUBLISHED = "published"
TOOLCHAIN = "toolchain"
ASSUMPTION = "assumption"


@dataclass(frozen=True)
class Limit:
    """One hardware number with its provenance, for reports."""

    name: str
    value: int
    kind: str  # PUBLISHED | TOOLCHAIN | ASSUMPTION
    source: str


@dataclass(frozen=True)
class SynapseFormat:
    """How much synaptic memory a dense block of weights takes on one core.

    Synapses are stored per destination core, grouped per input axon: each of the ``n_in`` input
    axons holds the weights to the ``n_neurons`` neurons of that core. An axon's weights are split
    into blocks of at most ``synapses_per_block``; a block costs
    ``n * weight_bits + header_bits``, rounded up to a multiple of ``word_bits``.
    ``synapses_per_block = 0`` means one block of any size (no per-block header).
    """

    name: str
    weight_bits: int
    header_bits: int = 0
    synapses_per_block: int = 0
    word_bits: int = 1

    def bits_per_axon(self, n_neurons: int) -> int:
        """Memory bits one input axon's weights to ``n_neurons`` neurons take."""
        if n_neurons <= 0:
            return 0
        block = self.synapses_per_block or n_neurons
        total = 0
        for start in range(0, n_neurons, block):
            n = min(block, n_neurons - start)
            bits = n * self.weight_bits + self.header_bits
            total += -(-bits // self.word_bits) * self.word_bits  # round up to whole words
        return total

    def bits(self, n_in: int, n_neurons: int) -> int:
        """Memory bits of a dense ``(n_neurons, n_in)`` weight block placed on one core."""
        return n_in * self.bits_per_axon(n_neurons)


#: Default: a dense weight costs its ``WEIGHT_BITS`` (8) and nothing else. ASSUMPTION (the Loihi 2
#: encoding is unpublished): this is a lower bound of the real cost.
PLAIN_DENSE = SynapseFormat(name="plain dense, no overhead (assumption)", weight_bits=WEIGHT_BITS)

#: The Loihi 1 dense encoding as nengo-loihi computes it (``nengo_loihi/block.py``,
#: ``SynapseConfig.bits_per_axon`` with ``compression = 3`` (dense, no index bits),
#: ``n_synapses = 63`` -> 64 synapses per block, ``synapse_idx_bits = 4`` + ``n_synapses_bits = 6``
#: of header, rounded up to 64-bit words). Loihi 1 format, used here only as a conservative option.
NENGO_LOIHI1_DENSE = SynapseFormat(
    name="Loihi 1 dense encoding (nengo-loihi)",
    weight_bits=WEIGHT_BITS,
    header_bits=4 + 6,
    synapses_per_block=64,
    word_bits=64,
)


@dataclass(frozen=True)
class CoreConstraints:
    """What one Loihi 2 neuro core can hold.

    Attributes:
        max_neurons: neurons (LIF compartments) per core. 8192: WikiChip (1,048,576 neurons per
            chip / 128 cores), consistent with "up to 1 million neurons" per chip (Loihi 2 brief,
            Orchard 2021). Published (derived).
        synaptic_memory_bits: synaptic weight memory per core. 1,048,576 bits = 128 KiB.
            ASSUMPTION (see module docstring).
        synapse_format: how dense weights occupy that memory (default ``PLAIN_DENSE``).
    """

    max_neurons: int = 8192
    synaptic_memory_bits: int = 128 * 1024 * 8
    synapse_format: SynapseFormat = field(default=PLAIN_DENSE)

    def memory_bits(self, n_in: int, n_neurons: int) -> int:
        """Synaptic memory that ``n_neurons`` neurons with ``n_in`` inputs each take on a core."""
        return self.synapse_format.bits(n_in, n_neurons)

    def fits(self, n_in: int, n_neurons: int) -> bool:
        """Whether ``n_neurons`` dense neurons with ``n_in`` inputs each fit on one core."""
        return (
            n_neurons <= self.max_neurons
            and self.memory_bits(n_in, n_neurons) <= self.synaptic_memory_bits
        )

    def max_neurons_for(self, n_in: int) -> int:
        """The most neurons with ``n_in`` inputs that fit on one core (0: not even one)."""
        lo, hi = 0, self.max_neurons  # invariant: fits(lo); memory is monotone in n_neurons
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(n_in, mid):
                lo = mid
            else:
                hi = mid - 1
        return lo


@dataclass(frozen=True)
class ChipConstraints:
    """What one Loihi 2 chip holds, and how many chips the target system has.

    Attributes:
        neuro_cores_published: 128 neuro cores per chip (Loihi 2 brief; Orchard 2021). Reported only.
        neuro_cores: neuro cores per chip that a mapping may use: 120, what Lava's mapper
            addresses for Loihi 2 (Lava mapper, ``NUM_VIRTUAL_CORES_L3``). Toolchain; the smaller,
            conservative figure.
        embedded_cores: 6 embedded x86 (Lakemont) processors per chip (Loihi 2 brief); they run
            host I/O, not neurons. Reported only.
        max_synapses: 120,000,000 synapses per chip (Loihi 2 brief). The brief does not say at
            what weight precision; checked as a count.
        n_chips: chips in the target system. 1 (a single-chip board such as Oheo Gulch); a
            Kapoho Point board has 8 (Loihi 2 brief). Project choice.
    """

    neuro_cores_published: int = 128
    neuro_cores: int = 120
    embedded_cores: int = 6
    max_synapses: int = 120_000_000
    n_chips: int = 1


@dataclass(frozen=True)
class Loihi2Target:
    """A Loihi 2 system: per-core and per-chip constraints. Data only."""

    core: CoreConstraints = field(default_factory=CoreConstraints)
    chip: ChipConstraints = field(default_factory=ChipConstraints)

    def limits(self) -> tuple[Limit, ...]:
        """Every capacity number of this target, with its provenance."""
        core, chip = self.core, self.chip
        return (
            Limit("neuro_cores_per_chip_published", chip.neuro_cores_published, PUBLISHED,
                  "Intel Loihi 2 brief 2021; Orchard et al. 2021"),
            Limit("neuro_cores_per_chip_mapped", chip.neuro_cores, TOOLCHAIN,
                  "lava/magma/compiler/subcompilers/constants.py NUM_VIRTUAL_CORES_L3"),
            Limit("embedded_cores_per_chip", chip.embedded_cores, PUBLISHED,
                  "Intel Loihi 2 brief 2021"),
            Limit("max_synapses_per_chip", chip.max_synapses, PUBLISHED,
                  "Intel Loihi 2 brief 2021 (precision unstated)"),
            Limit("chips_in_system", chip.n_chips, ASSUMPTION, "project choice (single-chip board)"),
            Limit("max_neurons_per_core", core.max_neurons, PUBLISHED,
                  "WikiChip Loihi 2: 1,048,576 neurons / 128 cores; brief: ~1M neurons/chip"),
            Limit("synaptic_memory_bits_per_core", core.synaptic_memory_bits, ASSUMPTION,
                  "unpublished for Loihi 2; 128 KiB = Loihi 1 MAX_SYNAPSE_BITS (nengo-loihi)"),
            Limit("weight_bits_per_synapse", core.synapse_format.weight_bits, TOOLCHAIN,
                  "constants.WEIGHT_BITS (Lava Dense)"),
            Limit("synapse_header_bits_per_block", core.synapse_format.header_bits,
                  ASSUMPTION, core.synapse_format.name),
        )


#: The default target: one Loihi 2 chip with the constraints above.
LOIHI2 = Loihi2Target()
