# fiboserver: every command a user or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-installs when the project metadata changes.
INSTALLED := $(VENV)/.installed
DEV_CONFIG := k8s/overlays/dev/config.yaml

.PHONY: help install run test lint

help: ## list the commands
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED) ## create .venv with the service and its dev tools

run: $(INSTALLED) ## serve the DEV configuration on :8080 in the foreground (Ctrl-C stops it)
	FIBOSERVER_CONFIG=$(DEV_CONFIG) exec $(BIN)/gunicorn -c gunicorn.conf.py

test: $(INSTALLED) ## run every test (CI=true: a missing tool fails instead of skipping)
	$(BIN)/pytest

lint: $(INSTALLED) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# --- image, TLS and Kubernetes deployment (issue 3; README "Deployment") ---------
# podman or docker, whichever is installed (podman first).
CONTAINER_ENGINE ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null)
IMAGE ?= fiboserver
# The image tag is the project version; k8s/base/kustomization.yaml pins the same.
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# Empty: the Dockerfile's pinned default. CI passes a local debootstrap base.
BASE_IMAGE ?=
# Extra build options, e.g. BUILD_FLAGS='--network host' where the default
# build network cannot reach PyPI.
BUILD_FLAGS ?=
# dev, prod or all (all = k8s/: namespace, both environments and the Ingress).
ENV ?= dev
K8S_DIR = $(if $(filter all,$(ENV)),k8s,k8s/overlays/$(ENV))
DEPLOYMENTS = $(if $(filter all,$(ENV)),fiboserver-dev fiboserver-prod,fiboserver-$(ENV))
CHECKOV := .tools/checkov/bin/checkov

.PHONY: image push certgen tls-secret deploy undeploy checkov

image: ## build the image IMAGE:TAG (fiboserver:<version>) with podman or docker; BASE_IMAGE=... optional
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image: neither podman nor docker is installed" >&2; exit 1; }
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -t $(IMAGE):$(TAG) .

push: ## push IMAGE:TAG to its registry (e.g. IMAGE=registry.example/fiboserver)
	$(CONTAINER_ENGINE) push $(IMAGE):$(TAG)

certgen: ## local CA + server certificate for `cloudnative` in tls/ (kept unless FORCE=1)
	FORCE=$(FORCE) tls/certgen.sh

tls-secret: ## create or update Secret `cloudnative` in namespace `cloudnative` from tls/
	kubectl apply -f k8s/namespace.yaml
	kubectl create secret tls cloudnative --namespace cloudnative \
	  --cert=tls/tls.crt --key=tls/tls.key --dry-run=client -o yaml | kubectl apply -f -

deploy: ## kubectl apply -k the environment: ENV=dev (default), prod or all
	@case "$(ENV)" in dev|prod|all) ;; *) echo "ENV must be dev, prod or all, not '$(ENV)'" >&2; exit 2;; esac
	kubectl apply -f k8s/namespace.yaml
	kubectl apply -k $(K8S_DIR)
	for d in $(DEPLOYMENTS); do kubectl -n cloudnative rollout status deployment/$$d --timeout=5m || exit 1; done

undeploy: ## kubectl delete -k the environment: ENV=dev (default), prod or all (all deletes the namespace)
	@case "$(ENV)" in dev|prod|all) ;; *) echo "ENV must be dev, prod or all, not '$(ENV)'" >&2; exit 2;; esac
	kubectl delete -k $(K8S_DIR) --ignore-not-found

$(CHECKOV):
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install --quiet --upgrade pip
	.tools/checkov/bin/pip install --quiet 'checkov==3.3.30'

checkov: $(CHECKOV) ## install checkov into its own venv .tools/checkov (tests/test_k8s.py runs it)

# --- end to end with podman and nginx (issue 4; README "End to end") --------------
# Needs root, podman (runc), debootstrap, nginx and curl: `.ci/run` installs them.
# tests/e2e/containers.conf is handed to podman through CONTAINERS_CONF: /etc stays as is.
E2E_CONTAINERS_CONF := $(CURDIR)/tests/e2e/containers.conf

.PHONY: e2e base-image

e2e: $(INSTALLED) ## end to end: image, podman kube play, TLS edge (nginx) and rollout drill
	$(BIN)/pytest -m e2e tests/e2e

base-image: ## Debian bookworm python3 base image for podman via debootstrap (kept unless FORCE=1)
	CONTAINERS_CONF=$(E2E_CONTAINERS_CONF) FORCE=$(FORCE) bash tests/e2e/base-image.sh

# --- benchmarks (issue 6; README "Performance") -----------------------------------
# Not part of `make test`: minutes of load on loopback; results in bench/results/.
# BENCH_ARGS passes options to bench/run.py, e.g. BENCH_ARGS="--rounds 3 --duration 5".
BENCH_ARGS ?=

.PHONY: bench

bench: $(INSTALLED) ## benchmark against the bare-WSGI ceiling (needs wrk: apt-get install wrk); writes bench/results/
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install -y wrk" >&2; exit 2; }
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# --- mutation testing (issue 13; docs/mutation.md) --------------------------------
# Not part of `make test`: it runs the unit and process tests once per mutant
# (about an hour on 2 cores). Each run starts from a fresh mutants/ copy, so the
# score is that of the tree as it is. MUTATE_JOBS: mutants tested in parallel.
MUTATE_JOBS ?= 2
MUTATE_INSTALLED := $(VENV)/.installed-mutate

.PHONY: mutate

$(MUTATE_INSTALLED): $(INSTALLED)
	$(BIN)/pip install --quiet -e '.[dev,mutate]'
	touch $@

mutate: $(MUTATE_INSTALLED) ## mutation testing of fiboserver/ (mutmut); prints the score and every survivor
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(MUTATE_JOBS)
	$(BIN)/python tests/mutation/summary.py $(BIN)/mutmut

# --- logs to Kibana (issue 5; README "Logs in Kibana") ------------------------------
# KIBANA_URL: e.g. after `kubectl -n logging port-forward svc/kibana 5601:5601`.
# KIBANA_CURL_ARGS: extra curl options, e.g. -u elastic:<password> or --cacert ca.crt.
KIBANA_URL ?= http://127.0.0.1:5601
KIBANA_CURL_ARGS ?=
KIBANA_OBJECTS := k8s/logging/kibana/saved-objects.ndjson

.PHONY: deploy-logging undeploy-logging kibana-import

deploy-logging: ## Fluent Bit DaemonSet to namespace logging; DEMO=1 first applies the demo Elasticsearch + Kibana
	$(if $(filter 1,$(DEMO)),kubectl apply -k k8s/logging/elastic)
	kubectl apply -k k8s/logging
	kubectl -n logging rollout status daemonset/fluent-bit --timeout=5m

undeploy-logging: ## remove Fluent Bit, keep namespace logging; DEMO=1 deletes the whole namespace, demo data included
	kubectl delete -k k8s/logging -l app.kubernetes.io/name=fluent-bit --ignore-not-found
	$(if $(filter 1,$(DEMO)),kubectl delete -k k8s/logging/elastic --ignore-not-found)

kibana-import: ## load the data view and saved searches into Kibana at KIBANA_URL (import API, overwrite)
	@out=$$(curl --silent --show-error --fail-with-body -X POST \
	  "$(KIBANA_URL)/api/saved_objects/_import?overwrite=true" \
	  -H 'kbn-xsrf: true' $(KIBANA_CURL_ARGS) --form file=@$(KIBANA_OBJECTS)) \
	  || { echo "kibana-import: request failed: $$out" >&2; exit 1; }; \
	if printf '%s' "$$out" | grep -Eq '"success"[[:space:]]*:[[:space:]]*true'; then \
	  echo "kibana-import: $$out"; \
	else \
	  echo "kibana-import: Kibana did not import everything: $$out" >&2; exit 1; \
	fi
