# The two commands: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test browser demo lint format install clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev,dask,wandb]" "$(TORCH_SPEC)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Debian's chromium, for tests/pipeline/test_report_browser.py (skipped, saying why, without it);
# installed where apt works, and never a reason for the build to fail.
browser:
	@command -v chromium >/dev/null 2>&1 || ( command -v apt-get >/dev/null 2>&1 && \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) ) || \
		echo "chromium not installed: the report's browser test will be skipped"

demo: $(STAMP)
	$(BIN)/webpairs demo --output demo-out

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) demo-out .pytest_cache
