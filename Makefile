# snnconvert: `make demo` and `make test` work on a fresh machine (they create .venv and install everything).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_ARGS ?= fmnist-vgg --coding differential --timesteps 8
DEMO_OUT ?= --eval-images 2000 --report reports/demo.json
PYTEST_ARGS ?=

.PHONY: setup data demo test test-fast test-full gpu-data gpu-wheels clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install $(TORCH_PINS)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package when the files are missing (nothing is downloaded at run time).
data: $(STAMP)
	@if $(PY) -c "from snnconvert.runtime.data import find_fashion_mnist; find_fashion_mnist()" 2>/dev/null; then \
		echo "fashion-mnist: found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "fashion-mnist missing: run 'sudo apt-get install dataset-fashion-mnist' or set SNNCONVERT_DATA_DIR"; \
		exit 1; \
	fi

demo: setup
	$(VENV)/bin/snnconvert $(DEMO_ARGS) $(DEMO_OUT)

test: setup
	$(PY) -m pytest --durations=20 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not full" $(PYTEST_ARGS)

test-full: setup
	$(PY) -m pytest -m full $(PYTEST_ARGS)

# Stage Fashion-MNIST (30 MB of .gz IDX files) in data/fashion-mnist (git-ignored), so that it can travel to a GPU
# machine without the Debian package; bench/gpu_check.sh uses it when present.
gpu-data: setup
	mkdir -p data/fashion-mnist
	$(PY) -c "from snnconvert.runtime.data import find_fashion_mnist; print(find_fashion_mnist())" \
		| xargs -I{} sh -c 'cp {}/*-ubyte* data/fashion-mnist/'

# Stage SpikingJelly's wheels (pure Python; Python 3.12 like the GPU machine) in .whl (git-ignored) for
# bench/gpu_check.sh, which installs them there when present: its kernel benchmark compares our rate IF kernel with
# SpikingJelly's Triton IF neuron. loguru is the one import-time dependency the GPU machine lacks.
SJ_WHEELS ?= spikingjelly==2.0.0 loguru==0.7.3
gpu-wheels: setup
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl $(SJ_WHEELS)

clean:
	rm -rf $(VENV) build *.egg-info reports .pytest_cache
