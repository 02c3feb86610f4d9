# `make test` and `make demo` build the environment (.venv) first when needed.
PYTHON := .venv/bin/python
ENV_STAMP := .venv/.convnext_mm-env
PYTEST_ARGS ?=
# Two test processes (one per core on the 2-core CI machines), each taking the next test as it
# finishes one; tests marked with the same xdist_group (those sharing a reference training
# run) stay together.
PYTEST_WORKERS ?= 2

.PHONY: env test test-gpu demo demo-det demo-seg clean-env

env: $(ENV_STAMP)

$(ENV_STAMP): tools/setup_env.sh requirements/env.txt setup.py
	bash tools/setup_env.sh
	touch $@

test: $(ENV_STAMP)
	$(PYTHON) -m pytest tests -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

# On a machine with a CUDA GPU: the GPU tests alone (a few minutes).
test-gpu: $(ENV_STAMP)
	$(PYTHON) -m pytest tests/test_cuda.py -v $(PYTEST_ARGS)

DEMO_DET := configs/demo/cascade_convnext_demo.py
DEMO_DET_DIR := work_dirs/demo_det
DEMO_SEG := configs/demo/upernet_convnext_demo.py
DEMO_SEG_DIR := work_dirs/demo_seg
NO_VAL := --cfg-options val_cfg=None val_dataloader=None val_evaluator=None

# Each demo trains without validation; its test step evaluates once and draws pictures; then
# the curves of the run, and tools/infer.py on a few images.
# Both demos, then their figures against floors (tests/test_demo_figures.py): a demo that no
# longer learns fails here.
demo: demo-det demo-seg
	$(PYTHON) -m pytest tests/test_demo_figures.py -m slow -q

demo-det: $(ENV_STAMP)
	$(PYTHON) tools/collect_env.py
	$(PYTHON) tools/make_toy_data.py --dataset coco --out data/toy_coco
	rm -rf $(DEMO_DET_DIR)
	$(PYTHON) tools/train.py $(DEMO_DET) --work-dir $(DEMO_DET_DIR) $(NO_VAL)
	$(PYTHON) tools/test.py $(DEMO_DET) $$(cat $(DEMO_DET_DIR)/last_checkpoint) \
		--work-dir $(DEMO_DET_DIR) --show-dir vis
	$(PYTHON) tools/plot_curves.py $(DEMO_DET_DIR) --keys loss lr stem_lr \
		--out $(DEMO_DET_DIR)/curves.png
	$(PYTHON) tools/infer.py $(DEMO_DET) $$(cat $(DEMO_DET_DIR)/last_checkpoint) \
		'data/toy_coco/val/00000[0-3].png' --out-dir $(DEMO_DET_DIR)/infer

demo-seg: $(ENV_STAMP)
	$(PYTHON) tools/make_toy_data.py --dataset ade20k --out data/toy_ade20k
	rm -rf $(DEMO_SEG_DIR)
	$(PYTHON) tools/train.py $(DEMO_SEG) --work-dir $(DEMO_SEG_DIR) $(NO_VAL)
	$(PYTHON) tools/test.py $(DEMO_SEG) $$(cat $(DEMO_SEG_DIR)/last_checkpoint) \
		--work-dir $(DEMO_SEG_DIR) --show-dir vis
	$(PYTHON) tools/plot_curves.py $(DEMO_SEG_DIR) --keys loss lr stem_lr \
		--out $(DEMO_SEG_DIR)/curves.png
	$(PYTHON) tools/infer.py $(DEMO_SEG) $$(cat $(DEMO_SEG_DIR)/last_checkpoint) \
		'data/toy_ade20k/images/validation/ADE_val_0000000[1-4].jpg' --out-dir $(DEMO_SEG_DIR)/infer

clean-env:
	rm -rf .venv build/logs
