"""Baselines run by the same AVCA protocol as STFT (issue #11).

- :mod:`~stft_neuro.baselines.ridge`: closed-form ridge regression from standardised mean-pooled
  audio + visual features to word2vec; no training loop.
- :mod:`~stft_neuro.baselines.avca_like`: the project's transformer and projections without the
  spiking branch, concatenation fusion (config switches of :class:`~stft_neuro.model.stft.STFT`).

Each ``run_protocol(...)`` returns what :meth:`stft_neuro.train.Trainer.run` returns:
``{"stage1_val": {"best_epoch", "HM", "bias"}, "stage2_test": GZSLMetrics.to_dict()}``.
"""
