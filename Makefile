# Two entry points (see README): `make demo` and `make test`. Each creates its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test data bench clean

# The Keras backends the tests run under, in this order (`make test BACKENDS=jax`).
BACKENDS ?= tensorflow jax torch
# torch's CPU build: a bare `torch` from PyPI brings several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tensorflow-cpu,tuner,tfds,plots,test]'
	touch $@

# JAX and torch, for the test runs under KERAS_BACKEND=jax / torch.
$(VENV)/.backends: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[jax]' '$(TORCH_SPEC)'
	touch $@

# Debian's dataset-fashion-mnist: the offline copy of Fashion-MNIST. Installed when
# missing and we are root; otherwise the loader explains what to do.
data:
	@if [ ! -d $(FASHION_MNIST_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi

demo: $(VENV)/.installed data
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) examples/quickstart.py

# Lint, then the backend-independent tests (NumPy math, docstring examples) once, then
# the Keras-facing tests once per backend; tests that need TensorFlow under Keras (Keras
# layers inside tf.distribute) report themselves skipped under the others. pytest-xdist
# runs each suite in one worker per core (at most TEST_WORKERS; a test file stays in one
# worker, so its module fixtures are built once); TEST_WORKERS=0 runs them in-process.
TEST_WORKERS ?= 4
PYTEST_WORKERS := $(if $(filter 0,$(TEST_WORKERS)),,-n auto --maxprocesses $(TEST_WORKERS) --dist loadfile)
# XLA compiles every small test model once and runs it a few steps: compiling with
# fewer optimisation passes made the JAX suite about 20 % faster here, same results.
# TensorFlow on CPU does not use XLA; an XLA_FLAGS of your own is kept.
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true
# Threads per test worker: the workers already fill the cores, and a thread pool per
# worker in each library (torch's OpenMP, TensorFlow's, OpenBLAS) oversubscribes them.
# One thread per worker on 2 cores: the torch suite took 1:19 instead of 2:24 here, the
# TensorFlow one 4:19 instead of 4:56, JAX's the same. Thread counts of your own
# (OMP_NUM_THREADS, ...) are kept.
ifndef TEST_THREADS
TEST_THREADS := $(shell $(PYTHON) -c "import os; n = os.cpu_count() or 1; w = min(n, $(TEST_WORKERS)) or 1; print(max(1, n // w))")
endif
THREAD_ENV = $(foreach v,OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS TF_NUM_INTRAOP_THREADS TF_NUM_INTEROP_THREADS,$(v)="$${$(v):-$(TEST_THREADS)}")
# JAX's persistent compilation cache, in a directory of this run only (removed after
# it): the test processes compile the same small programs again and again (eager
# operations on the same shapes, the same test models); every compilation is cached,
# however short. The JAX suite took 5:21 instead of 6:39 here. A
# JAX_COMPILATION_CACHE_DIR of your own is kept.
test: $(VENV)/.installed $(VENV)/.backends data
	$(PY) -m ruff check keras_classpca tests benchmarks examples
	@set -e; echo "=== pytest, backend-independent"; \
	$(THREAD_ENV) TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest $(PYTEST_WORKERS) -m "not keras" --doctest-modules keras_classpca tests --durations=5; \
	cache=$$(mktemp -d); trap 'rm -rf "$$cache"' EXIT; \
	for backend in $(BACKENDS); do \
		echo "=== pytest, KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend XLA_FLAGS="$${XLA_FLAGS:-$(TEST_XLA_FLAGS)}" TF_CPP_MIN_LOG_LEVEL=2 $(THREAD_ENV) \
			JAX_COMPILATION_CACHE_DIR="$${JAX_COMPILATION_CACHE_DIR:-$$cache}" \
			JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
			$(PY) -m pytest $(PYTEST_WORKERS) -m keras --durations=10; \
	done

# The main benchmarks (long); each is a module of the `benchmarks` package, run from here.
bench: $(VENV)/.installed data
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m benchmarks.bench_accumulate
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m benchmarks.bench_hybrid

clean:
	rm -rf $(VENV) build *.egg-info
