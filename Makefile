# relay: `make run` (set up + start with the embedded broker) and `make test` (set up + every test).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CORE   := relay/core/_core$(shell $(PYTHON) -c "import sysconfig;print(sysconfig.get_config_var('EXT_SUFFIX'))")
NODE_STAMP := tests/e2e/js/node_modules/.installed-stamp
BENCH_NODE_STAMP := bench/peers/node/node_modules/.installed-stamp
# the shop demo's pages bundle the Centrifugo JS SDK (npm) with esbuild into relay/demo/static
DEMO_WEB   := relay/demo/web
DEMO_STAMP := $(DEMO_WEB)/node_modules/.installed-stamp
DEMO_JS    := relay/demo/static/shop.js relay/demo/static/agent.js

# Dependencies: requirements.lock pins the whole tree (with hashes) that the suite last passed on; make installs
# exactly that, deploy/requirements.lock is its runtime part for the image. `make lock` refreshes both (run
# `make test-latest` first); `make test-lowest` runs the suite on the lowest versions pyproject.toml allows.
LOCK        := requirements.lock
DEPLOY_LOCK := deploy/requirements.lock
UV          := $(VENV)/bin/uv
LOCK_FLAGS  := --generate-hashes --universal --python-version 3.11 --custom-compile-command "make lock" --quiet
LATEST      := .venv-latest
LOWEST      := .venv-lowest

.PHONY: run test test-compiled test-pure build bench bench-quick clean demo-push lock test-latest test-lowest

$(PY):
	$(PYTHON) -m venv $(VENV)

# The lock, not the newest releases: --no-deps because the lock is the whole tree, --no-build-isolation so
# relay itself builds with the locked setuptools and Cython instead of whatever is newest today.
$(STAMP): $(PY) $(LOCK) pyproject.toml setup.py
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(CORE): $(STAMP) relay/core/_core.pyx relay/core/_core.pxd setup.py
	$(PY) setup.py --quiet build_ext --inplace

$(DEMO_STAMP): $(DEMO_WEB)/package.json $(DEMO_WEB)/package-lock.json
	cd $(DEMO_WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $(DEMO_STAMP)

$(DEMO_JS) &: $(DEMO_STAMP) $(wildcard $(DEMO_WEB)/src/*.js)
	cd $(DEMO_WEB) && npm run --silent build

build: $(CORE) $(DEMO_JS)

$(NODE_STAMP): tests/e2e/js/package.json
	cd tests/e2e/js && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

$(BENCH_NODE_STAMP): bench/peers/node/package.json bench/peers/node/package-lock.json
	cd bench/peers/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(BENCH_NODE_STAMP)

run: build
	$(PY) -m relay serve -c deploy/relay.dev.toml --print-token demo-user

# The whole suite twice: on the compiled core (and a test fails if it was not loaded),
# then on the pure-Python twin. Both always run and are reported; either failing fails the target.
test: build $(NODE_STAMP) $(BENCH_NODE_STAMP)
	.ci/install-chromium
	.ci/suites $(PY)

test-compiled:
	RELAY_EXPECT_COMPILED=1 $(PY) -m pytest -q -p no:cacheprovider

test-pure:
	RELAY_PUREPYTHON=1 $(PY) -m pytest -q -p no:cacheprovider

# Refresh both locks to the newest releases (UPGRADE=redis: only that package). Run `make test-latest` first:
# it is the same set of versions, tested.
lock: $(STAMP)
	$(UV) pip compile pyproject.toml --extra test --extra build --extra lock $(LOCK_FLAGS) \
		$(if $(UPGRADE),--upgrade-package $(UPGRADE),--upgrade) -o $(LOCK)
	$(UV) pip compile pyproject.toml --extra build $(LOCK_FLAGS) -c $(LOCK) -o $(DEPLOY_LOCK)
	@echo "locked: $$(grep -c '==' $(LOCK)) packages in $(LOCK), $$(grep -c '==' $(DEPLOY_LOCK)) in $(DEPLOY_LOCK)"

# The suite against the newest release of every dependency (its own venv, so .venv keeps the lock): the next
# upstream break shows here before a user meets it. Run it before every `make lock`. The core is rebuilt with
# the newest Cython for the run and removed after it, so the next `make` builds it with the locked one again.
test-latest: $(STAMP) $(NODE_STAMP) $(BENCH_NODE_STAMP) $(DEMO_JS)
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade -r pyproject.toml --extra test --extra build
	.ci/test-with $(LATEST)/bin/python $(LOCK)

# The suite on the lowest version of every direct dependency that pyproject.toml allows (uv's lowest-direct
# resolution; what they pull in is the newest that fits), so that each lower bound is one that was tested.
test-lowest: $(STAMP) $(NODE_STAMP) $(BENCH_NODE_STAMP) $(DEMO_JS)
	rm -rf $(LOWEST) && $(PYTHON) -m venv $(LOWEST)
	$(UV) pip install --quiet --python $(LOWEST)/bin/python --resolution lowest-direct -r pyproject.toml \
		--extra test --extra build
	.ci/test-with $(LOWEST)/bin/python $(LOCK)

# Pushes into the running demo through the real server API: an order status to CUSTOMER (its id is
# on the shop page) or, without CUSTOMER, a sale announcement to every shop page.
demo-push:
	$(PY) -m relay.demo.push -c deploy/relay.dev.toml $(if $(CUSTOMER),--customer $(CUSTOMER)) \
		$(if $(STATUS),--status "$(STATUS)") $(if $(TEXT),--text "$(TEXT)")

# Every benchmark (relay against its peers, same run), then docs/benchmarks.md; bench-quick: smoke runs.
bench: build
	$(PY) -m relay bench

bench-quick: build
	$(PY) -m relay bench --quick

# Locust load test against a relay it starts (or URL=ws://...): make loadtest SCENARIO=reconnect_storm USERS=500
# DURATION=5m; reports in loadtests/reports/SCENARIO/; exits non-zero when a threshold is missed.
.PHONY: loadtest
SCENARIO ?= flash_sale
loadtest: build
	$(PY) loadtests/run.py $(SCENARIO) $(if $(USERS),-u $(USERS)) $(if $(DURATION),-t $(DURATION)) \
		$(if $(URL),--url $(URL)) $(LOADTEST_ARGS)

clean:
	rm -rf build relay/core/_core.c relay/core/_core*.so relay/core/_core.html $(DEMO_JS) $(LATEST) $(LOWEST)
