# The two commands in README.md; each runs the whole set-up first (idempotent, fast on reruns).
VENV := .venv
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean-cache

setup:
	@bash scripts/setup.sh

demo: setup
	@$(VENV)/bin/percolate-demo

test: setup
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	@cd bench && for b in embed ocr parse speech store search ingest node_memory perf_triton perf_frontend; do ../$(VENV)/bin/python $$b.py --quick || exit 1; done

clean-cache:
	rm -rf .cache model_assets model_repository/*/1/model.onnx
