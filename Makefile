# Two entry points for a fresh machine: `make demo` (main job on bundled data) and `make test`.
# Both create .venv, install the pinned CPU torch (never a CUDA build on a CPU machine) and build the extension.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.7.1
NVCC ?= nvcc
PYTEST_ARGS ?=
BENCH_ARGS ?=
# A second environment with the real pyDVL 0.10 (it needs numpy < 2, which the main one does not pin), where
# `make test` also runs the adapter's tests against it; and a third one for OpenDataVal 1.3 (docs/integrations.md)
PYDVL_VENV ?= .venv-pydvl
PBIN := $(PYDVL_VENV)/bin
ODV_VENV ?= .venv-odv
OBIN := $(ODV_VENV)/bin
# OpenDataVal's run-time needs for tabular data (its own pins ask for torch ~2.1, numpy < 1.26, pandas < 2)
ODV_DEPS ?= pandas scikit-learn matplotlib tqdm requests scipy "geomloss==0.2.6"

CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
PYSRC := $(shell find lossval_fast -name '*.py' -o -name '*.in' -o -name '*.gz')

.PHONY: demo test test-pydvl build bench cuda-check opendataval clean gpu gpu-wheels gpu-dry-run

$(BIN)/python:
	@echo "==> creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: $(BIN)/python pyproject.toml
	@echo "==> installing $(TORCH_SPEC) (CPU build), $(TRITON_SPEC) and the test tools into $(VENV) (a few minutes the first time)"
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" "$(TRITON_SPEC)" numpy tqdm matplotlib pandas "scikit-build-core>=0.10" \
		pytest pytest-benchmark pot geomloss scikit-learn hypothesis
	touch $@

$(VENV)/.built: $(VENV)/.deps $(CSRC) $(PYSRC) CMakeLists.txt
	@echo "==> building the C++ extension and installing lossval_fast into $(VENV) (several minutes on 2 cores the first time)"
	$(BIN)/pip install --quiet --no-build-isolation --no-deps .
	@# -P: do not put the current directory on sys.path, or the source tree (no compiled _C) would shadow the
	@# installed package; the build must not silently fall back to pure Python
	$(BIN)/python -P -c "import lossval_fast._C, lossval_fast; print('built', lossval_fast.__file__)"
	touch $@

build: $(VENV)/.built

demo: build
	@echo "==> running the demo (lossval-fast demo)"
	$(BIN)/python -P -m lossval_fast demo

test: build cuda-check test-pydvl
	@echo "==> running the test suite (tests/, 10-20 minutes on 2 cores)"
	cd tests && ../$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# pyDVL 0.10 beside the same torch: its own venv (pip resolves numpy 1.26 there), lossval_fast installed from the
# wheel of the main build, and the adapter's tests against the real library
$(PYDVL_VENV)/.deps:
	@echo "==> creating $(PYDVL_VENV) with pyDVL 0.10 and $(TORCH_SPEC) (a few minutes the first time)"
	$(PYTHON) -m venv $(PYDVL_VENV)
	$(PBIN)/pip install --quiet --upgrade pip
	$(PBIN)/pip install --quiet "$(TORCH_SPEC)" "pydvl==0.10.*" pandas tqdm pytest
	touch $@

$(PYDVL_VENV)/.built: $(PYDVL_VENV)/.deps $(VENV)/.built
	@echo "==> installing lossval_fast into $(PYDVL_VENV) (the wheel of the main build)"
	rm -rf build/wheel
	$(BIN)/pip wheel --quiet --no-build-isolation --no-deps -w build/wheel .
	$(PBIN)/pip install --quiet --no-deps --force-reinstall build/wheel/*.whl
	touch $@

test-pydvl: $(PYDVL_VENV)/.built
	@echo "==> the pyDVL adapter against the real pyDVL 0.10 ($(PYDVL_VENV))"
	cd tests && ../$(PBIN)/python -m pytest -q test_pydvl_real.py

# OpenDataVal 1.3 pins torch ~2.1: installed without its dependencies beside our torch, with the ones it needs
# at run time (docs/integrations.md)
$(ODV_VENV)/.deps:
	@echo "==> creating $(ODV_VENV) with OpenDataVal 1.3 (--no-deps) beside $(TORCH_SPEC)"
	$(PYTHON) -m venv $(ODV_VENV)
	$(OBIN)/pip install --quiet --upgrade pip
	$(OBIN)/pip install --quiet "$(TORCH_SPEC)" $(ODV_DEPS) pytest
	$(OBIN)/pip install --quiet --no-deps "opendataval==1.3.*"
	touch $@

opendataval: $(ODV_VENV)/.deps $(VENV)/.built
	@echo "==> installing lossval_fast into $(ODV_VENV) and running the adapter against the real OpenDataVal"
	rm -rf build/wheel
	$(BIN)/pip wheel --quiet --no-build-isolation --no-deps -w build/wheel .
	$(OBIN)/pip install --quiet --no-deps --force-reinstall build/wheel/*.whl
	cd tests && ../$(OBIN)/python -m pytest -q test_opendataval_real.py

# a fresh folder bench/runs/<date-time> (BENCH_ARGS="--quick", "--update-results", "--select EXPR", ...)
bench: build
	@echo "==> running the benchmark suites (lossval-fast bench $(BENCH_ARGS))"
	$(BIN)/python -P -m lossval_fast bench $(BENCH_ARGS)

# Every CUDA kernel is compile-checked with nvcc for sm_80 and sm_90, even without a GPU or a CUDA torch.
cuda-check:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
		mkdir -p build/cuda-check && for f in csrc/cuda/*.cu; do \
			[ -e "$$f" ] || continue; echo "nvcc -c $$f"; \
			$(NVCC) -std=c++17 -O3 -Icsrc -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
				-c $$f -o build/cuda-check/$$(basename $$f .cu).o || exit 1; \
		done; \
	else echo "cuda-check: nvcc not found, CUDA kernels not compile-checked"; fi

# ---- The GPU run (docs/benchmarks.md "The GPU run"): on a lent GPU machine (Python 3.12, its own torch 2.11 + CUDA 13,
# triton 3.6, no network) one command builds against that torch and runs the CUDA/Triton tests and the GPU
# benchmarks (bench/gpu_run.py, under 8 minutes), writing bench/results/*_gpu.md. The Python packages it needs beyond
# the machine's own come from wheels/ (git-excluded; `make gpu-wheels` fills it here and the device call carries it).
GPU_VENV ?= .venv-gpu
GPU_PYTHON ?= python3
GPU_DEPS ?= "scikit-build-core>=0.10" pytest cmake ninja
GPU_NODEPS ?= geomloss
GPU_ARGS ?=
GPU_WHEEL_FLAGS := --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d wheels

# geomloss without its dependencies: they are torch and numpy, which the GPU machine has (a download with them
# would fetch a CUDA torch, several GB); the whole folder stays small enough to travel with the device call
gpu-wheels: $(BIN)/python
	@echo "==> downloading the GPU run's wheels for Python 3.12 (manylinux x86_64) into wheels/"
	$(BIN)/pip download $(GPU_WHEEL_FLAGS) $(GPU_DEPS)
	$(BIN)/pip download $(GPU_WHEEL_FLAGS) --no-deps $(GPU_NODEPS)
	@! ls wheels | grep -iE '^(torch|nvidia)' || (echo "wheels/ holds a torch or CUDA wheel: remove it"; exit 1)
	@du -sh wheels

gpu:
	@echo "==> the GPU run: a venv over the machine's torch, the build with CUDA, tests and benchmarks"
	$(GPU_PYTHON) -c "import torch; assert torch.cuda.is_available() and torch.version.cuda, 'make gpu needs a CUDA torch and a GPU'"
	@# a venv over the machine's own torch; where python3-venv is missing, the machine's python itself (a throwaway
	@# machine: --user, past PEP 668's marker)
	set -e; \
	if $(GPU_PYTHON) -m venv --system-site-packages $(GPU_VENV); then py=$(GPU_VENV)/bin/python; into=""; \
	else py=$(GPU_PYTHON); into="--user --break-system-packages"; fi; \
	$$py -m pip install $$into --quiet --no-index --find-links wheels $(GPU_DEPS) $(GPU_NODEPS) || \
		$$py -m pip install $$into --quiet $(GPU_DEPS) $(GPU_NODEPS); \
	LOSSVAL_FAST_CUDA_ARCHS=native CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$$py -m pip install $$into --quiet --no-build-isolation --no-deps .; \
	$$py -P -c "import lossval_fast; b = lossval_fast.info()['backends_built']; print('built', b); assert b.get('cuda'), b"; \
	$$py -P bench/gpu_run.py --out bench/results $(GPU_ARGS)

# the same script on this CPU machine (Triton interpreter, tiny shapes): what CI runs so that it never rots
gpu-dry-run: build
	$(BIN)/python -P bench/gpu_run.py --dry-run --out build/gpu-dry-run

clean:
	rm -rf build $(VENV) $(PYDVL_VENV) $(ODV_VENV) .pytest_cache
