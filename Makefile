# The two commands in README.md; each runs the whole set-up first (idempotent, fast on reruns).
VENV := .venv
PYTEST_ARGS ?=
# the whole suite's wall-clock limit (CI allows 90 minutes; the suite takes ~5): a hang fails, it does not stall CI
TEST_TIME_LIMIT ?= 45m

.PHONY: setup demo test bench clean-cache

setup:
	@bash scripts/setup.sh

demo: setup
	@$(VENV)/bin/percolate-demo

test: setup
	@timeout --kill-after=60s $(TEST_TIME_LIMIT) $(VENV)/bin/python -m pytest $(PYTEST_ARGS) || { \
	  rc=$$?; [ $$rc -ne 124 ] || echo "make test: the suite ran past $(TEST_TIME_LIMIT) and was stopped" >&2; exit $$rc; }

bench: setup
	@cd bench && for b in embed ocr scanned_pdf parse speech store search ingest node_memory perf_triton perf_frontend backup retrieval failover model_memory frontend_memory parse_scaling; do ../$(VENV)/bin/python $$b.py --quick || exit 1; done

clean-cache:
	rm -rf .cache model_assets model_repository/*/1/*.onnx
