# Two commands set everything up on a fresh machine:
#   make demo   -> creates .venv if missing, then runs the main job on synthetic PSMA PET/CT data
#   make test   -> creates .venv if missing, then runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch/torchvision are pinned only here (local wheels on our machines);
# pyproject keeps ranges so users can bring their own CUDA build.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.sam-l1dfl-installed
DEMO_OUT ?= demo_out

.PHONY: demo test venv clean bench gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e ".[dev]" $(TORCH_PINS)
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) scripts/bench_loss.py
	$(PY) scripts/bench_encoder.py

# The prepared GPU check (docs/gpu.md): ~8 min on one GPU, one log in $(GPU_CHECK_DIR) (default
# gpu_check_out/). Uses the machine's own python3 and torch (no venv is made: a GPU box may have no
# network); WHEELS=dir installs the missing packages from a wheel folder first, offline.
gpu-check:
	bash scripts/gpu_check.sh $(if $(WHEELS),--wheels $(WHEELS))

clean:
	rm -rf $(DEMO_OUT) .pytest_cache gpu_check_out
