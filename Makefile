# One entry point for every task. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is a local CPU wheel here.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
CONFIG ?= pipelines/configs/demo.yaml
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench lint lint-format compile images image-check gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	$(PY) -m repeatlab run --local --config $(CONFIG)

test: install
	$(PY) -m pytest -m "not slow" --cov=repeatlab --cov-report=term:skip-covered $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks.run_all

lint-format:
	$(PY) -m ruff format --check .

# ruff (rules, line length, complexity <= 15), `ruff format` on the whole repository, mypy on repeatlab/, import cycles and
# function length (scripts/check_architecture.py). The same checks run as pre-commit hooks (.pre-commit-config.yaml).
lint: install
	$(PY) -m ruff check repeatlab components pipelines tests benchmarks scripts
	$(MAKE) -s lint-format
	$(PY) -m mypy
	$(PY) scripts/check_architecture.py

compile: install
	$(PY) -m repeatlab compile --output pipelines/repetition_grid.yaml
	$(PY) -m repeatlab.pipelines.audit_corpus

images: install
	./images/build.sh

# Build the CPU image for real (buildah; a Debian stand-in base when no registry is reachable) and run, inside it as
# uid 1000: repeatlab --help, the package imports, the trainer command's interpreter, a one-point two-rank study.
image-check: install
	./images/check.sh

# On a machine with a CUDA GPU (the lent device): the CUDA tests (bf16, torch.compile, steps on the GPU), then the
# trainer benchmark on the GPU, eager and compiled, and the packed-training benchmark (bench_pack); JSON results
# under $(GPU_OUT) (default $$OUT, else .gpu-check).
GPU_OUT ?= $(or $(OUT),.gpu-check)
gpu-check: install
	$(PY) -c "import torch; assert torch.cuda.is_available(), 'gpu-check: no CUDA device'; print(torch.cuda.get_device_name(0))"
	mkdir -p $(GPU_OUT)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_model.py
	$(PY) -m benchmarks.bench_train --device cuda --quick --out $(GPU_OUT)/bench_train_eager.json
	$(PY) -m benchmarks.bench_train --device cuda --quick --compile --out $(GPU_OUT)/bench_train_compiled.json
	$(PY) -m benchmarks.bench_pack --device cuda --quick --out $(GPU_OUT)/bench_pack.json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
