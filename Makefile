# Developer entry points. Override e.g. `make venv PYTHON=python3.12 TORCH_VERSION=2.13.0`.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
TORCH_PINS = "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"

VENV_PY = $(VENV)/bin/python
STAMP = $(VENV)/.installed

.PHONY: venv test demo bench clean distclean

venv: $(STAMP)

# torch goes in first and is named again in the project install, so no resolver swaps it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --upgrade pip
	$(VENV_PY) -m pip install $(TORCH_PINS)
	$(VENV_PY) -m pip install -e ".[test]" $(TORCH_PINS)
	touch $(STAMP)

# Lint and format check (ruff, configured in pyproject.toml) and type check of the engine (mypy), then the tests.
test: venv
	$(VENV)/bin/ruff check TAGSSegment bench scripts
	$(VENV)/bin/ruff format --check TAGSSegment bench scripts
	$(VENV)/bin/mypy
	HF_HUB_OFFLINE=1 TAGSEG_CACHE_DIR=$(CURDIR)/.cache/tagseg $(VENV_PY) -m pytest TAGSSegment/Testing/Python -q

demo: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/tagseg demo --out demo_output

bench: venv
	$(VENV_PY) bench/run_bench.py
	HF_HUB_OFFLINE=1 $(VENV_PY) bench/corrective_bench.py
	HF_HUB_OFFLINE=1 $(VENV_PY) bench/slicer_path.py --case ../shared/data/lesions_dev/deeplesion_000001_ct --json
	HF_HUB_OFFLINE=1 $(VENV_PY) bench/serve_overhead.py
	HF_HUB_OFFLINE=1 $(VENV_PY) bench/serve_soak.py --clients 4 --sessions 5 --seconds 120
	HF_HUB_OFFLINE=1 $(VENV_PY) bench/phantoms.py
	HF_HUB_OFFLINE=1 $(VENV_PY) bench/startup.py --runs 5 --importtime
	HF_HUB_OFFLINE=1 $(VENV_PY) bench/encoder_variants.py

# Outputs and caches; the venv survives because rebuilding it takes minutes (see distclean).
clean:
	rm -rf .cache demo_output bench/results build dist .mypy_cache TAGSSegment/.mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
