# Two commands: `make run` (demo gateway) and `make test` (whole suite). Both set everything up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(notdir $(PYTHON))
PIP_FLAGS ?=
ifneq (,$(findstring pypy,$(PYTHON)))
PIP_FLAGS += --only-binary=cryptography,cffi
endif

.PHONY: run test unit lint check clean

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(PIP_FLAGS)
	$(PY) -m pip install -q $(PIP_FLAGS) -e '.[test]' --config-settings editable_mode=compat
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP)
	@echo "avx-gateway demo on http://127.0.0.1:8080 -> echo upstream on 127.0.0.1:9001"
	@echo "try: curl -s http://127.0.0.1:8080/api/users/42?verbose=1"
	$(VENV)/bin/twistd --pidfile= -n avx-gateway --config config/demo.toml --demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

unit: $(STAMP)
	$(VENV)/bin/trial tests.unit

check: $(STAMP)
	$(VENV)/bin/twistd avx-gateway --config config/gateway.toml --check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache _trial_temp
