# Two entry points for a fresh machine: `make demo` (the main job, offline) and `make test`.
# Each creates its own virtual environment and installs what it needs from the package registries.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on these machines' disk; an unpinned torch would pull CUDA builds (several GB).
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= tiny-model

.PHONY: install demo test test-gpu schemas clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/swiftops tiny-model $(DEMO_DIR) --arch qwen2 --seed 0
	$(VENV)/bin/swiftops infer --model $(DEMO_DIR) --val_dataset examples/demo.jsonl \
		--result_path results/demo.jsonl --max_new_tokens 24 --temperature 0 --max_batch_size 4
	@echo "--- results/demo.jsonl (a random tiny model: the text is gibberish by design) ---"
	@head -c 2000 results/demo.jsonl

test: install
	$(PY) -m pytest -q -m "not gpu and not slow"

test-gpu: install
	$(PY) -m pytest -q -m gpu

# The JSON schemas are generated from the settings and manifest models; tests fail when they are stale.
schemas: install
	$(VENV)/bin/swiftops schema -o manifests/schema.json
	$(VENV)/bin/swiftops schema --chart-values -o helm/swiftops/values.schema.json

clean:
	rm -rf $(VENV) results $(DEMO_DIR)

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
		tests/manifest/test_docker.py tests/manifest/test_loader.py tests/manifest/test_apply.py tests/media/test_fetch.py \
		tests/media/test_hardening.py tests/server/test_request_limits.py tests/server/test_http_guard.py
