# Two entry points (see README): `make demo` and `make test`. Each creates its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test data bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Debian's dataset-fashion-mnist: the offline copy of Fashion-MNIST. Installed when
# missing and we are root; otherwise the loader explains what to do.
data:
	@if [ ! -d $(FASHION_MNIST_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi

demo: $(VENV)/.installed data
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) examples/quickstart.py

test: $(VENV)/.installed data
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest

bench: $(VENV)/.installed data
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/bench_accumulate.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/bench_hybrid.py

clean:
	rm -rf $(VENV) build *.egg-info
