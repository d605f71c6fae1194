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
	@$(VENV)/bin/python bench/embed.py --quick
	@$(VENV)/bin/python bench/perf_triton.py --quick

clean-cache:
	rm -rf .cache model_assets model_repository/*/1/model.onnx
