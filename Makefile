# Two entry points for a fresh machine: `make demo` (main job on bundled data) and `make test`.
# Both create .venv, install the pinned CPU torch (never a CUDA build on a CPU machine) and build the extension.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.7.1
NVCC ?= nvcc
PYTEST_ARGS ?=

CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
PYSRC := $(shell find lossval_fast -name '*.py' -o -name '*.in' -o -name '*.gz')

.PHONY: demo test build bench cuda-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" "$(TRITON_SPEC)" numpy tqdm matplotlib "scikit-build-core>=0.10" \
		pytest pytest-benchmark pot geomloss scikit-learn hypothesis
	touch $@

$(VENV)/.built: $(VENV)/.deps $(CSRC) $(PYSRC) CMakeLists.txt
	$(BIN)/pip install --quiet --no-build-isolation --no-deps .
	@# -P: do not put the current directory on sys.path, or the source tree (no compiled _C) would shadow the
	@# installed package; the build must not silently fall back to pure Python
	$(BIN)/python -P -c "import lossval_fast._C, lossval_fast; print('built', lossval_fast.__file__)"
	touch $@

build: $(VENV)/.built

demo: build
	$(BIN)/python -P -m lossval_fast demo

test: build cuda-check
	cd tests && ../$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: build
	cd bench && ../$(BIN)/python -m pytest -q --benchmark-columns=min,median,rounds $(PYTEST_ARGS)

# Every CUDA kernel is compile-checked with nvcc for sm_80 and sm_90, even without a GPU or a CUDA torch.
cuda-check:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
		mkdir -p build/cuda-check && for f in csrc/cuda/*.cu; do \
			[ -e "$$f" ] || continue; echo "nvcc -c $$f"; \
			$(NVCC) -std=c++17 -O3 -Icsrc -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
				-c $$f -o build/cuda-check/$$(basename $$f .cu).o || exit 1; \
		done; \
	else echo "cuda-check: nvcc not found, CUDA kernels not compile-checked"; fi

clean:
	rm -rf build $(VENV) .pytest_cache
