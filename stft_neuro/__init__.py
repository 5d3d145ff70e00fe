"""stft-neuro: the Spiking Tucker Fusion Transformer for audio-visual zero-shot learning,
trained with Loihi 2's integer arithmetic and deployed through NIR to Lava.

Subpackages: ``stft_neuro.data`` (benchmarks), ``stft_neuro.model`` (torch model),
``stft_neuro.hw_targets`` (Loihi 2 limits, quantization, design rules, energy),
``stft_neuro.sim`` (reference simulator, Lava runner, bridge), ``stft_neuro.converters``
(torch <-> NIR <-> Lava).
"""
__version__ = "0.1.0"
