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

DEMO_DET := configs/demo/cascade_convnext_demo.py
DEMO_DET_DIR := work_dirs/demo_det

# The demo trains without validation; its test step evaluates once and draws pictures.
demo: $(ENV_STAMP)
	$(PYTHON) tools/collect_env.py
	$(PYTHON) tools/make_toy_data.py --out data/toy_coco
	rm -rf $(DEMO_DET_DIR)
	$(PYTHON) tools/train.py $(DEMO_DET) --work-dir $(DEMO_DET_DIR) \
		--cfg-options val_cfg=None val_dataloader=None val_evaluator=None
	$(PYTHON) tools/test.py $(DEMO_DET) $$(cat $(DEMO_DET_DIR)/last_checkpoint) \
		--work-dir $(DEMO_DET_DIR) --show-dir vis

clean-env:
	rm -rf .venv build/logs
