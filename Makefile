# Every target: `make help`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_CONFIG := deploy/config/dev.toml
HOST ?= 127.0.0.1
PORT ?= 8080

.DEFAULT_GOAL := help

# Serving needs only the service's own dependencies (RUN_STAMP); the dev, test and
# load-test tools (STAMP) are a superset, so installing them satisfies `make run` too.
RUN_STAMP := $(VENV)/.installed-run
# One image name and tag for `make image`, the README and deploy/base/kustomization.yaml
# (tests/test_deploy.py checks they agree).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= group-counter:$(VERSION)
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

# Every install comes from uv.lock (hashes included), through the uv pinned in
# deploy/uv-requirements.txt, itself hash-checked and bootstrapped from PyPI into .tools/.
# --frozen: install exactly the lock, never re-resolve (a stale lock is an error, not an update).
UV := .tools/bin/uv
export UV_PYTHON_DOWNLOADS := never
UV_SYNC := $(UV) sync --frozen --python $(PYTHON)

$(UV): deploy/uv-requirements.txt
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r deploy/uv-requirements.txt
	touch $(UV)

$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV_SYNC) --extra dev --extra loadtest
	touch $(STAMP) $(RUN_STAMP)

# --inexact: add what serving needs without removing the dev tools a `make test` installed.
$(RUN_STAMP): pyproject.toml uv.lock $(UV)
	$(UV_SYNC) --inexact
	touch $(RUN_STAMP)

.PHONY: install  ## Create .venv and install the service with its dev tools, exactly as locked
install: $(STAMP)

.PHONY: lock  ## Re-resolve every dependency to its newest allowed release into uv.lock, then make test
lock: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)
	$(MAKE) test
	@echo "uv.lock refreshed and the tests pass: commit it on its own (git add uv.lock)"

# make lock-uv UV_VERSION=x.y.z: pin another uv (hash-checked) in deploy/uv-requirements.txt.
UV_VERSION ?=
.PHONY: lock-uv  ## Pin uv UV_VERSION (with its hashes) in deploy/uv-requirements.txt
lock-uv: $(UV)
	@test -n "$(UV_VERSION)" || { echo "usage: make lock-uv UV_VERSION=x.y.z" >&2; exit 1; }
	@{ sed -n '1,2p' deploy/uv-requirements.txt; echo 'uv==$(UV_VERSION)' | $(UV) pip compile - --generate-hashes \
	  --python-version 3.11 --no-header --quiet | grep -v '^ *# via'; } > deploy/uv-requirements.txt.new
	mv deploy/uv-requirements.txt.new deploy/uv-requirements.txt

# Base images are pinned by digest (Dockerfile, docker-compose.yml, deploy/overlays/dev/redis.yaml);
# this pulls each tag and rewrites the pins to what the tag points at today.
.PHONY: pin-images  ## Refresh the base images' digests from their registries (needs Docker and the network)
pin-images:
	@for tag in python:3.11-slim redis:7; do \
	  docker pull --quiet $$tag >/dev/null && digest=$$(docker image inspect --format '{{index .RepoDigests 0}}' $$tag) || exit 1; \
	  echo "$$tag -> $${digest#*@}"; \
	  sed -i -E "s#$$tag(@sha256:[0-9a-f]{64})?#$$tag@$${digest#*@}#g" Dockerfile docker-compose.yml deploy/overlays/dev/redis.yaml; \
	done

.PHONY: redis-server  ## Make sure redis-server, wrk, node, openssl, jq and promtool exist (apt-get install when root)
redis-server:
	@{ command -v redis-server && command -v wrk && command -v node && command -v openssl && command -v jq; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server wrk nodejs openssl jq >/dev/null; \
	  else echo "a test tool is missing: sudo apt-get install redis-server wrk nodejs openssl jq" >&2; exit 1; fi; }
	@# The demo page's test runs a real headless Chromium (Debian's, with its chromedriver).
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium is missing: sudo apt-get install chromium chromium-driver" >&2; exit 1; fi; }
	@# promtool checks deploy/monitoring's alerts; Debian ships it in the prometheus package.
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "promtool is missing: sudo apt-get install --no-install-recommends prometheus" >&2; exit 1; fi; }

# Valkey 8 (the Redis 7.2 fork, with WAITAOF) for the tests of ack_fsync, which Debian's
# Redis 7.0 cannot run: bookworm-backports' package, checked by apt, unpacked into .tools/.
# (tests/support.py finds it there; the stamp, as the binary's own date is the package's.)
VALKEY := .tools/valkey/.fetched
$(VALKEY): tests/tools/fetch_valkey.sh
	bash tests/tools/fetch_valkey.sh .tools/valkey
	touch $(VALKEY)

.PHONY: run  ## Serve on HOST:PORT (default 127.0.0.1:8080) with the embedded store and the dev config
run: $(RUN_STAMP)
	@$(PY) -m service curl-example --config $(DEV_CONFIG) --host $(HOST) --port $(PORT) --require-free-port
	$(PY) -m service --host $(HOST) --port $(PORT) --config $(DEV_CONFIG)

# make release VERSION=x.y.z: the version bumped everywhere it is written, the CHANGELOG's
# Unreleased section dated, one commit and the tag vX.Y.Z (deploy/release.py), then the image.
.PHONY: release  ## Release VERSION=x.y.z: bump, CHANGELOG, commit, tag vX.Y.Z, then make image
release: $(UV)
	$(PYTHON) deploy/release.py $(VERSION) --uv $(UV)
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then $(MAKE) image; \
	else echo "no Docker engine here: run 'make image' at the tag v$(VERSION) where there is one"; fi

.PHONY: image  ## Build the container image group-counter:VERSION (needs a Docker engine)
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE) .

# make cert [CERT_DIR=certs] [CERT_HOSTS='DNS:console.tim.qq.com,DNS:localhost,IP:127.0.0.1']
# A local CA (ca.pem: what clients trust) and a server certificate signed by it (cert.pem,
# key.pem: what the service serves) whose subjectAltName covers the platform's host, so
# an SDK with that host fixed verifies it after a DNS override (README, "Use your
# existing SDK"). CERT_DIR is git-ignored; keys never leave it.
CERT_DIR ?= certs
FORCE ?=
CERT_HOSTS ?= DNS:console.tim.qq.com,DNS:localhost,IP:127.0.0.1

.PHONY: cert  ## A local CA (kept if there; FORCE=1 replaces it) and a server certificate in CERT_DIR
cert:
	@command -v openssl >/dev/null 2>&1 || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }
	@mkdir -p $(CERT_DIR) && chmod 700 $(CERT_DIR)
	@# Clients already trust an existing CA: keep it (a new server certificate is signed by it)
	@# unless FORCE=1 asks for a new one, which every client must then trust again.
	@if [ -s $(CERT_DIR)/ca.pem ] && [ -s $(CERT_DIR)/ca.key ] && [ "$(FORCE)" != 1 ]; then \
	  echo "$(CERT_DIR)/ca.pem: keeping the existing CA (make cert FORCE=1 replaces it)"; \
	else \
	  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj '/CN=group-counter local CA' \
	    -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
	    -keyout $(CERT_DIR)/ca.key -out $(CERT_DIR)/ca.pem 2>/dev/null; \
	fi
	@printf '%s\n' 'subjectAltName=$(CERT_HOSTS)' 'extendedKeyUsage=serverAuth' \
	  'keyUsage=critical,digitalSignature,keyEncipherment' 'basicConstraints=critical,CA:FALSE' \
	  'authorityKeyIdentifier=keyid' 'subjectKeyIdentifier=hash' > $(CERT_DIR)/server.ext
	@openssl req -newkey rsa:2048 -nodes -subj '/CN=group-counter' \
	  -keyout $(CERT_DIR)/key.pem -out $(CERT_DIR)/server.csr 2>/dev/null
	@openssl x509 -req -in $(CERT_DIR)/server.csr -CA $(CERT_DIR)/ca.pem -CAkey $(CERT_DIR)/ca.key \
	  -CAcreateserial -days 825 -extfile $(CERT_DIR)/server.ext -out $(CERT_DIR)/cert.pem 2>/dev/null
	@rm -f $(CERT_DIR)/server.csr $(CERT_DIR)/server.ext $(CERT_DIR)/ca.srl
	@chmod 600 $(CERT_DIR)/ca.key $(CERT_DIR)/key.pem
	@echo "$(CERT_DIR)/cert.pem + $(CERT_DIR)/key.pem: serve with --tls-cert/--tls-key ($(CERT_HOSTS))"
	@echo "$(CERT_DIR)/ca.pem: make your clients trust it (e.g. REQUESTS_CA_BUNDLE=$(CERT_DIR)/ca.pem)"

.PHONY: format  ## Fix formatting and autofixable lint
format: $(STAMP)
	$(VENV)/bin/ruff format service tests deploy/loadtest deploy/release.py
	$(VENV)/bin/ruff check --fix service tests deploy/loadtest deploy/release.py

.PHONY: lint  ## ruff and mypy --strict
lint: $(STAMP)
	$(VENV)/bin/ruff check service tests deploy/loadtest deploy/release.py
	$(VENV)/bin/ruff format --check service tests deploy/loadtest deploy/release.py
	$(VENV)/bin/mypy

.PHONY: test  ## Lint, then every test against a real redis-server and the embedded store
test: $(STAMP) redis-server $(VALKEY) lint
	$(PY) -m pytest

.PHONY: test-slow  ## The long runs too: property tests, fault proxy, the failover kit (well over an hour)
test-slow: $(STAMP) redis-server $(VALKEY)
	$(PY) -m pytest -m slow --timeout 1200

.PHONY: help  ## This list
help:
	@grep -E '^\.PHONY: [a-z-]+  ## ' $(MAKEFILE_LIST) | sed -E 's/^\.PHONY: ([a-z-]+)  ## /  make \1\t/' | expand -t 20

# make loadtest TARGET=... SDKAPPID=... IDENTIFIER=... DURATION=... USERS=... [GROUP_MODE=implicit]
# [RESULTS=dir] [LOCUST_ARGS='--mix increase=1,get=1 --counter-groups 8']; the app's secret key
# comes from LOADTEST_SECRET_KEY (for `make run`'s dev config: dev-secret-key-not-for-production).
# Details: deploy/loadtest/README.md.
LOADTEST_TIME := $(shell date +%Y%m%d-%H%M%S)
TARGET ?= http://127.0.0.1:8080
SDKAPPID ?= 1400000000
IDENTIFIER ?= administrator
DURATION ?= 30s
USERS ?= 16
GROUP_MODE ?= registered
RESULTS ?= results/loadtest-$(LOADTEST_TIME)
LOCUST_ARGS ?=

.PHONY: loadtest  ## Locust on TARGET: HTML/CSV report, summary and exactness verdict in RESULTS
loadtest: $(STAMP)
	@test -n "$$LOADTEST_SECRET_KEY" || { echo "LOADTEST_SECRET_KEY is not set: export the app's secret key (the dev config's: dev-secret-key-not-for-production)" >&2; exit 1; }
	@$(PY) -c 'import locust' 2>/dev/null || $(UV_SYNC) --inexact --extra loadtest
	@mkdir -p $(RESULTS)
	@status=0; \
	$(PY) -m locust -f deploy/loadtest/locustfile.py --headless --only-summary \
	  --host '$(TARGET)' --users $(USERS) --spawn-rate $(USERS) --run-time $(DURATION) \
	  --sdkappid $(SDKAPPID) --identifier '$(IDENTIFIER)' --group-mode $(GROUP_MODE) \
	  --html $(RESULTS)/report.html --csv $(RESULTS)/stats --summary-file $(RESULTS)/summary.txt \
	  $(LOCUST_ARGS) || status=$$?; \
	echo; cat $(RESULTS)/summary.txt 2>/dev/null || echo "no summary: see the output above" >&2; \
	echo "report: $(RESULTS)/report.html, CSV: $(RESULTS)/stats_*.csv"; \
	exit $$status

# make bench [BENCH_ARGS='--duration 20 --rounds 5']: the service against the ceiling app
# (tests/bench/ceiling.py) side by side, servers pinned to CPU 0, wrk, the open-loop driver and
# redis-server to CPU 1 (taskset). Writes BENCHMARKS.md and docs/bench-latency.png. Every
# command's row: BENCH_ARGS='--row-rounds 5 --row-duration 10', or '--rows get,cluster' for some.
BENCH_ARGS ?=

.PHONY: bench-tools  ## Make sure node (the open-loop driver) exists and matplotlib is in .venv
bench-tools: $(STAMP) redis-server
	@command -v node >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null; \
	  else echo "node is missing: sudo apt-get install nodejs" >&2; exit 1; fi; }
	@{ $(PY) -c 'import matplotlib' && test -x $(VENV)/bin/py-spy; } 2>/dev/null || $(UV_SYNC) --inexact --extra bench

.PHONY: bench  ## Benchmark vs the ceiling app: BENCHMARKS.md with the table, targets and chart
bench: $(STAMP) redis-server bench-tools
	$(PY) -m tests.bench.run --workers-check --out BENCHMARKS.md $(BENCH_ARGS)

# make bench-compare REF=<git ref> [BENCH_ARGS='--rounds 9']: the service at REF against the
# service now, side by side in one run (tests/bench/compare.py).
REF ?= HEAD~1

.PHONY: bench-compare  ## The service at REF (default HEAD~1) against the service now, side by side
bench-compare: $(STAMP) redis-server
	$(PY) -m tests.bench.compare --ref $(REF) $(BENCH_ARGS)

# make profile [PROFILE_ARGS='--workload live --watchers 10000']: where one worker's time goes
# under a bench load: its user/kernel CPU, py-spy's files and lines, perf's shared objects
# (when the machine has perf). Workloads: update (the default config), update-warning, get, cluster, live.
PROFILE_ARGS ?=

.PHONY: profile  ## Profile one worker under a bench load (py-spy; perf when present)
profile: $(STAMP) redis-server bench-tools
	$(PY) -m tests.bench.profile $(PROFILE_ARGS)

.PHONY: bench-soak  ## 5-minute load on one worker: its RSS growth, into BENCHMARKS.md
bench-soak: $(STAMP) redis-server bench-tools
	$(PY) -m tests.bench.run --soak 300 --soak-only --out BENCHMARKS.md $(BENCH_ARGS)

.PHONY: bench-smoke  ## The benchmark at tiny scale (seconds): proves the tool works, writes a temp file
bench-smoke: $(STAMP) redis-server bench-tools
	$(PY) -m tests.bench.run --smoke $(BENCH_ARGS)
