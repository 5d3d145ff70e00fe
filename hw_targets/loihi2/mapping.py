"""Place a :class:`FixedPointNetwork` on Loihi 2 neuro cores: pure functions, data in and out.

Each layer (``Dense -> LIF``) is split over as many cores as its neurons need, limited by the
neurons per core and by the synaptic memory per core. A layer's dense weights are stored on the
cores of its *destination* neurons: a core holding ``k`` neurons of a layer with ``n_in`` inputs
holds ``k * n_in`` synapses (``CoreConstraints.memory_bits`` gives their bits). A layer's neurons
are spread evenly over its cores (sizes differ by at most one), layers never share a core, and
cores are numbered in layer order; chip ``c`` holds cores ``[c * neuro_cores, (c+1) * neuro_cores)``.
The host input of layer 0 arrives through the embedded processors and takes no neuro core.

A neuron whose ``n_in`` synapses do not fit in one core's memory cannot be placed at all; such a
layer is still mapped one neuron per core (so the totals stay meaningful), those cores do not
``fit``, and ``rules.fan_in_fits_core`` reports it.
"""
from __future__ import annotations

from dataclasses import dataclass

from stft_neuro.hw_targets.loihi2.network import FixedPointLayer, FixedPointNetwork
from stft_neuro.hw_targets.loihi2.resources import LOIHI2, CoreConstraints, Loihi2Target


@dataclass(frozen=True)
class CoreAllocation:
    """One neuro core's share of one layer.

    Attributes:
        layer: the layer's name.
        core_index: global core number in the mapping (0-based, layer order).
        neuron_range: ``(start, stop)`` of the layer's neurons on this core (stop exclusive).
        neurons: ``stop - start``.
        synapses: ``neurons * n_in`` (dense weights stored on the destination core).
        synaptic_memory_bits: memory those synapses take (``CoreConstraints.memory_bits``).
        n_in: the layer's fan-in.
    """

    layer: str
    core_index: int
    neuron_range: tuple[int, int]
    synapses: int
    synaptic_memory_bits: int
    neurons: int
    n_in: int

    def fits(self, core: CoreConstraints) -> bool:
        return core.fits(self.n_in, self.neurons)

    def neuron_utilisation(self, core: CoreConstraints) -> float:
        return self.neurons / core.max_neurons

    def memory_utilisation(self, core: CoreConstraints) -> float:
        return self.synaptic_memory_bits / core.synaptic_memory_bits


@dataclass(frozen=True)
class Mapping:
    """The placement of a whole network, with its totals."""

    target: Loihi2Target
    allocations: tuple[CoreAllocation, ...]

    @property
    def cores_used(self) -> int:
        return len(self.allocations)

    @property
    def chips_needed(self) -> int:
        return -(-self.cores_used // self.target.chip.neuro_cores)

    @property
    def neurons(self) -> int:
        return sum(a.neurons for a in self.allocations)

    @property
    def synapses(self) -> int:
        return sum(a.synapses for a in self.allocations)

    @property
    def synaptic_memory_bits(self) -> int:
        return sum(a.synaptic_memory_bits for a in self.allocations)

    def chip_of(self, allocation: CoreAllocation) -> int:
        return allocation.core_index // self.target.chip.neuro_cores

    def for_layer(self, name: str) -> tuple[CoreAllocation, ...]:
        return tuple(a for a in self.allocations if a.layer == name)

    def utilisation(self) -> tuple[tuple[float, float], ...]:
        """Per core, ``(neurons / max_neurons, memory / synaptic_memory_bits)``."""
        core = self.target.core
        return tuple(
            (a.neuron_utilisation(core), a.memory_utilisation(core)) for a in self.allocations
        )


def cores_for_layer(n_in: int, n_out: int, core: CoreConstraints) -> int:
    """How many cores ``n_out`` neurons with ``n_in`` inputs each need (``n_out`` if one does not fit)."""
    if n_out == 0:
        return 0
    per_core = core.max_neurons_for(n_in)
    if per_core == 0:
        return n_out
    return -(-n_out // per_core)


def split_evenly(n: int, parts: int) -> tuple[tuple[int, int], ...]:
    """``parts`` contiguous ranges covering ``range(n)``, sizes differing by at most one."""
    base, extra = divmod(n, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        ranges.append((start, stop))
        start = stop
    return tuple(ranges)


def map_layer(
    layer: FixedPointLayer, first_core: int, core: CoreConstraints
) -> tuple[CoreAllocation, ...]:
    """Split one layer over cores ``first_core, first_core + 1, ...``."""
    n_in, n_out = layer.n_in, layer.n_out
    n_cores = cores_for_layer(n_in, n_out, core)
    if n_cores == 0:
        return ()
    return tuple(
        CoreAllocation(
            layer=layer.name,
            core_index=first_core + i,
            neuron_range=(start, stop),
            synapses=(stop - start) * n_in,
            synaptic_memory_bits=core.memory_bits(n_in, stop - start),
            neurons=stop - start,
            n_in=n_in,
        )
        for i, (start, stop) in enumerate(split_evenly(n_out, n_cores))
    )


def map_network(network: FixedPointNetwork, target: Loihi2Target = LOIHI2) -> Mapping:
    """Place every layer of ``network`` on ``target``'s cores, in layer order."""
    allocations: list[CoreAllocation] = []
    for layer in network.layers:
        allocations.extend(map_layer(layer, len(allocations), target.core))
    return Mapping(target=target, allocations=tuple(allocations))
