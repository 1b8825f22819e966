# Two commands: `make run` (demo gateway) and `make test` (whole suite). Both set everything up.
# `make test PYTHON=pypy3` / `make run PYTHON=pypy3` do the same on PyPy, in their own .venv-pypy.
PYTHON ?= python3
PIP_FLAGS ?=
ifneq (,$(findstring pypy,$(notdir $(PYTHON))))
IS_PYPY := 1
VENV ?= .venv-pypy
# No Rust/C toolchain needed: only PyPy wheels of these two, never sdists (kept even when
# PIP_FLAGS is given on the command line).
override PIP_FLAGS += --only-binary=cryptography,cffi
else
VENV ?= .venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(notdir $(PYTHON))

# A venv that could not be made is removed, so the next run starts over. On PyPy, a missing
# pypy3 (or its venv support) is installed with apt-get when running as root; else say how.
ifdef IS_PYPY
define VENV_FAILED
rm -rf $(VENV); \
if [ "$(PYTHON)" = "$(notdir $(PYTHON))" ] && [ "$$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then \
  echo "installing pypy3 pypy3-venv with apt-get"; \
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pypy3 pypy3-venv \
    && $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; \
else \
  echo "$(PYTHON) is missing or cannot create a venv; install it first, e.g. on Debian/Ubuntu:" >&2; \
  echo "  sudo apt-get install pypy3 pypy3-venv   (or: make ... PYTHON=/path/to/pypy3)" >&2; \
  exit 1; \
fi
endef
else
VENV_FAILED = rm -rf $(VENV); exit 1
endif

.PHONY: run test test-tools unit lint check clean bench redis-server

# httptools has no PyPy wheels: it builds from source against PyPy's Python.h with a C compiler.
ifdef IS_PYPY
define BUILD_DEPS
include="$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
if [ ! -f "$$include/Python.h" ] || ! command -v cc >/dev/null 2>&1; then \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
    echo "installing pypy3-dev gcc with apt-get (httptools builds from source on PyPy)"; \
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pypy3-dev gcc \
      || exit 1; \
  else \
    echo "httptools builds from source on PyPy: install PyPy's headers and a C compiler," >&2; \
    echo "  e.g. sudo apt-get install pypy3-dev gcc" >&2; \
    exit 1; \
  fi; \
fi
endef
else
BUILD_DEPS = true
endif

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { $(VENV_FAILED); }
	@$(BUILD_DEPS)
	$(PY) -m pip install -q --upgrade pip $(PIP_FLAGS)
	$(PY) -m pip install -q $(PIP_FLAGS) -e '.[test]' --config-settings editable_mode=compat
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP)
	@echo "avx-gateway demo on http://127.0.0.1:8080 -> echo upstream on 127.0.0.1:9001"
	@echo "try: curl -s http://127.0.0.1:8080/api/users/42?verbose=1"
	$(VENV)/bin/avx-gateway demo

test: $(STAMP) test-tools
	$(PY) -m ruff check .
	$(PY) -m pytest

# What the tests run for real, installed with apt-get when missing (as root): redis-server (the
# shared rate-limit tests start their own), prometheus (promtool checks a real scrape; a real
# Prometheus runs the dashboard's queries), logrotate (parses the shipped logrotate file), node
# and npm (the OAuth2/OIDC tests run a real OpenID provider, the oidc-provider npm package pinned
# in tests/support/oidc, installed there with `npm ci` when its node_modules is missing or older
# than its lock file). Without root, the redis and OAuth2/OIDC tests need redis-server and node
# installed; the others skip, saying why.
OIDC_DIR := tests/support/oidc
# The HTTP Working Group's cache test suite (http-cache-tests, pinned there; run by
# tests/support/http_cache_suite.py), installed the same way.
CACHE_TESTS_DIR := tests/support/cache_tests
test-tools:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v logrotate >/dev/null 2>&1 || missing="$$missing logrotate"; \
	command -v node >/dev/null 2>&1 || command -v nodejs >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing with apt-get (used by the tests)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -q --no-install-recommends $$missing || exit 1; \
	  elif ! command -v redis-server >/dev/null 2>&1; then \
	    echo "the tests need redis-server (e.g. sudo apt-get install redis-server)" >&2; exit 1; \
	  elif ! command -v npm >/dev/null 2>&1; then \
	    echo "the OAuth2/OIDC tests need node and npm (e.g. sudo apt-get install nodejs npm)" >&2; \
	    exit 1; \
	  else \
	    echo "not installed:$$missing (needs root and apt-get); the tests that use them skip"; \
	  fi; \
	fi; \
	if [ ! -d $(OIDC_DIR)/node_modules/oidc-provider ] \
	    || [ $(OIDC_DIR)/package-lock.json -nt $(OIDC_DIR)/node_modules/.package-lock.json ]; then \
	  echo "installing the test OpenID provider in $(OIDC_DIR) (npm ci)"; \
	  (cd $(OIDC_DIR) && npm ci --no-audit --no-fund --loglevel=error) || exit 1; \
	fi; \
	if [ ! -d $(CACHE_TESTS_DIR)/node_modules/http-cache-tests ] \
	    || [ $(CACHE_TESTS_DIR)/package-lock.json -nt $(CACHE_TESTS_DIR)/node_modules/.package-lock.json ]; then \
	  echo "installing the HTTP cache test suite in $(CACHE_TESTS_DIR) (npm ci)"; \
	  (cd $(CACHE_TESTS_DIR) && npm ci --no-audit --no-fund --loglevel=error) || exit 1; \
	fi
redis-server: test-tools
unit: $(STAMP)
	$(VENV)/bin/trial tests.unit

check: $(STAMP)
	$(VENV)/bin/avx-gateway check --config config/gateway.toml

clean:
	rm -rf .venv .venv-pypy $(VENV) build *.egg-info .pytest_cache _trial_temp

# Side-by-side benchmark (nginx, aiohttp, ReverseProxyResource, the gateway on CPython and PyPy):
# installs nginx, wrk and h2load if missing, loads 127.0.0.1 only, rewrites docs/benchmarks.md.
bench: $(STAMP)
	bash bench/run.sh $(BENCH_ARGS)
