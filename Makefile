# relay: `make run` (set up + start with the embedded broker) and `make test` (set up + every test).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CORE   := relay/_core$(shell $(PYTHON) -c "import sysconfig;print(sysconfig.get_config_var('EXT_SUFFIX'))")
NODE_STAMP := tests/e2e/js/node_modules/.installed-stamp
BENCH_NODE_STAMP := bench/peers/node/node_modules/.installed-stamp
# the shop demo's pages bundle the Centrifugo JS SDK (npm) with esbuild into relay/demo/static
DEMO_WEB   := relay/demo/web
DEMO_STAMP := $(DEMO_WEB)/node_modules/.installed-stamp
DEMO_JS    := relay/demo/static/shop.js relay/demo/static/agent.js

.PHONY: run test test-compiled test-pure build bench bench-quick clean demo-push

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml setup.py
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(CORE): $(STAMP) relay/_core.pyx relay/_core.pxd setup.py
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
# then on the pure-Python twin.
test: build $(NODE_STAMP) $(BENCH_NODE_STAMP)
	.ci/install-chromium
	$(PY) -m ruff check relay tests bench loadtests examples
	$(MAKE) test-compiled
	$(MAKE) test-pure

test-compiled:
	RELAY_EXPECT_COMPILED=1 $(PY) -m pytest -q -p no:cacheprovider

test-pure:
	RELAY_PUREPYTHON=1 $(PY) -m pytest -q -p no:cacheprovider

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
	rm -rf build relay/_core.c relay/_core*.so relay/_core.html $(DEMO_JS)
