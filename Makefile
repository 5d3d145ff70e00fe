# Two commands: `make demo` and `make test`. Each creates or updates .venv when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stft-neuro-installed
WHEELS := $(VENV)/lava-wheels

.PHONY: demo test test-slow bench install clean

install: $(STAMP)

# torch first and pinned (2.13.0 is the CPU wheel available here); then Lava's wheels, rebuilt
# with the two Python 3.11 mends (tools/mend_lava.py); then this package, editable, with its
# optional extras (Ray for the sharded runs: the tests exercise it).
$(STAMP): pyproject.toml tools/mend_lava.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 "numpy>=1.26,<2"
	$(PY) tools/mend_lava.py $(WHEELS)
	$(PY) -m pip install --quiet --find-links $(WHEELS) -e ".[lava,test,ray]"
	# pip check, except for NeuroBench's dataset dependencies (installed without them, below)
	$(PY) -m pip check > $(VENV)/pip-check.txt || \
		(grep -v '^neurobench ' $(VENV)/pip-check.txt | grep . && exit 1 || true)
	# NeuroBench's metric classes for the report tests; its declared torchaudio/tonic dependencies
	# are for datasets and do not install here, so it comes last, without dependencies.
	$(PY) -m pip install --quiet --no-deps neurobench==2.3.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stft-neuro demo

# Lava is part of the installed environment: a Lava test that cannot import Lava fails (tests/conftest.py).
# `make test` is the fast default suite; `make test-slow` the long ones (interrupts, real-size ONNX).
test: $(STAMP)
	STFT_NEURO_REQUIRE_LAVA=1 $(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	STFT_NEURO_REQUIRE_LAVA=1 $(PY) -m pytest -q -m slow

# The deployment benchmarks (minutes); the model-quality sweeps are listed in BENCHMARKS.md.
bench: $(STAMP)
	$(PY) bench/bench_kernels.py --emulate-avx2
	$(PY) bench/bench_reference.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
