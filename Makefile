# Two commands for a fresh machine:
#   make demo   run roost on its embedded store with a simulated house (http://127.0.0.1:8080)
#   make test   install what the tests need (Debian peers + Python packages) and run every test

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages the tests and benchmarks talk to.
DEBIAN_PEERS := mosquitto socat ser2net victoria-metrics chromium prometheus restic

.PHONY: demo test venv test-deps peers bench clean

$(BIN)/roost: pyproject.toml src/roost/web/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	npm ci --prefix src/roost/web --no-audit --no-fund --silent  # the dashboard's uPlot, from the npm registry
	touch $@

venv: $(BIN)/roost

demo: venv
	$(BIN)/roost demo $(ARGS)

$(VENV)/.test-deps: $(BIN)/roost pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test-deps: $(VENV)/.test-deps

peers:
	@missing=""; for p in $(DEBIAN_PEERS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: test-deps peers
	$(BIN)/pytest

bench: test-deps peers
	$(BIN)/python bench/store.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
