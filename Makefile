# `make test` and `make demo` build the environment (.venv) first when needed.
PYTHON := .venv/bin/python
ENV_STAMP := .venv/.convnext_mm-env
PYTEST_ARGS ?=

.PHONY: env test demo clean-env

env: $(ENV_STAMP)

$(ENV_STAMP): tools/setup_env.sh requirements/env.txt setup.py
	bash tools/setup_env.sh
	touch $@

test: $(ENV_STAMP)
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

demo: $(ENV_STAMP)
	$(PYTHON) tools/collect_env.py

clean-env:
	rm -rf .venv build/logs
