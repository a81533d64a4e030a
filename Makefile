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

lint: $(INSTALLED) ## ruff, mypy and the import contracts (README "Architecture")
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# --- metrics (issue 10; README "Metrics") -------------------------------------------
# Debian's prometheus package (apt-get install prometheus) on 127.0.0.1:9090,
# scraping `make run`'s /metrics (metrics_port 9464) with k8s/monitoring's rules.
# Config, rules and data go to .monitor/ (git-ignored).
MONITOR_ARGS ?=

.PHONY: monitor

monitor: $(INSTALLED) ## Prometheus on 127.0.0.1:9090 scraping `make run` (in another terminal), with the alert rules
	$(BIN)/python -m tests.support.promlocal --dir .monitor $(MONITOR_ARGS)

# --- tracing (issue 18; README "Tracing", docs/tracing.md) ----------------------------
# Jaeger v2 built from its pinned Go module (tools/cluster/build/jaeger; the first
# run compiles it, about 8 minutes), memory storage, on 127.0.0.1: OTLP/HTTP on
# :4318, the query API on :16686. It prints the variables that make `make run`
# export to it. Config in .traces/ (git-ignored).
TRACES_ARGS ?=

.PHONY: traces

traces: $(INSTALLED) ## Jaeger on 127.0.0.1 (OTLP :4318, query API :16686) for `make run`, which it tells how to export
	$(BIN)/python -m tests.support.jaeger --dir .traces $(TRACES_ARGS)

# --- image, TLS and Kubernetes deployment (issue 3; README "Deployment") ---------
# podman or docker, whichever is installed (podman first).
CONTAINER_ENGINE ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null)
# localhost/: the name podman gives a local build anyway, and the one a node's
# containerd keeps for an image imported from `podman save` / `docker save`, so
# the pod's image reference matches the loaded image (a bare `fiboserver` would
# mean docker.io/library/fiboserver there).
IMAGE ?= localhost/fiboserver
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# THE ONE PLACE computing the tag (make image, make deploy, make print-image):
# <version>-<commit>, e.g. 0.1.0-54aec29, so every commit is a new tag and a new
# pod template (with IfNotPresent, an old tag would never roll out new code).
# Uncommitted changes: <version>-<commit>-dirty-<tree>, <tree> hashing the working
# tree (untracked files included) through a throw-away index, so each different
# dirty state is a different tag too. Without git: the version alone.
# GIT_STATE = "<full commit> <short commit> [<tree>]", computed once on first use
# (`make help` never runs git).
GIT_STATE = $(eval GIT_STATE := $(shell \
  if commit=$$(git rev-parse HEAD 2>/dev/null); then \
    echo "$$commit $$(git rev-parse --short HEAD)"; \
    if [ -n "$$(git status --porcelain 2>/dev/null)" ]; then \
      idx=$$(mktemp) && cp "$$(git rev-parse --git-path index)" "$$idx" \
      && GIT_INDEX_FILE=$$idx git add -A && tree=$$(GIT_INDEX_FILE=$$idx git write-tree) \
      && rm -f "$$idx" && echo "$${tree:0:7}"; fi; \
  fi))$(GIT_STATE)
DIRTY_TREE = $(word 3,$(GIT_STATE))
TAG ?= $(VERSION)$(if $(GIT_STATE),-$(word 2,$(GIT_STATE))$(if $(DIRTY_TREE),-dirty-$(DIRTY_TREE)))
# The full commit for the image's org.opencontainers.image.revision label.
REVISION = $(word 1,$(GIT_STATE))$(if $(DIRTY_TREE),-dirty)
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

.PHONY: image print-image manifests lock sbom push certgen tls-secret deploy undeploy checkov

image: ## build IMAGE:TAG (localhost/fiboserver:<version>-<commit>) with podman or docker; BASE_IMAGE=... optional
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image: neither podman nor docker is installed" >&2; exit 1; }
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  --label org.opencontainers.image.version=$(VERSION) \
	  --label org.opencontainers.image.revision=$(REVISION) \
	  -t $(IMAGE):$(TAG) .

print-image: ## print IMAGE:TAG, the image `make image` builds and `make deploy` sets
	@echo '$(IMAGE):$(TAG)'

# The environment K8S_DIR rendered with its image set to IMAGE:TAG: a kustomization
# generated in a temporary directory refers to K8S_DIR (kustomize wants a relative
# path) and sets `images:`, so no tracked file is edited.
RENDER_WITH_IMAGE = dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT \
	&& printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' \
	  'resources:' "  - $$(realpath --relative-to="$$dir" $(K8S_DIR))" \
	  'images:' '  - name: fiboserver' '    newName: $(IMAGE)' '    newTag: $(TAG)' \
	  >"$$dir/kustomization.yaml" \
	&& kubectl kustomize "$$dir"

manifests: ## print what `make deploy` applies (ENV=dev, prod or all; image IMAGE:TAG)
	@case "$(ENV)" in dev|prod|all) ;; *) echo "ENV must be dev, prod or all, not '$(ENV)'" >&2; exit 2;; esac
	@$(RENDER_WITH_IMAGE)

push: ## push IMAGE:TAG to its registry (e.g. IMAGE=registry.example/fiboserver)
	$(CONTAINER_ENGINE) push $(IMAGE):$(TAG)

certgen: ## local CA + server certificate for `cloudnative` in tls/ (kept unless FORCE=1)
	FORCE=$(FORCE) tls/certgen.sh

tls-secret: ## create or update Secret `cloudnative` in namespace `cloudnative` from tls/
	kubectl apply -f k8s/namespace.yaml
	kubectl create secret tls cloudnative --namespace cloudnative \
	  --cert=tls/tls.crt --key=tls/tls.key --dry-run=client -o yaml | kubectl apply -f -

deploy: ## apply the environment with image IMAGE:TAG: ENV=dev (default), prod or all
	@case "$(ENV)" in dev|prod|all) ;; *) echo "ENV must be dev, prod or all, not '$(ENV)'" >&2; exit 2;; esac
	kubectl apply -f k8s/namespace.yaml
	set -o pipefail; { $(RENDER_WITH_IMAGE); } | kubectl apply -f -
	for d in $(DEPLOYMENTS); do kubectl -n cloudnative rollout status deployment/$$d --timeout=5m || exit 1; done

undeploy: ## kubectl delete -k the environment: ENV=dev (default), prod or all (all deletes the namespace)
	@case "$(ENV)" in dev|prod|all) ;; *) echo "ENV must be dev, prod or all, not '$(ENV)'" >&2; exit 2;; esac
	kubectl delete -k $(K8S_DIR) --ignore-not-found

$(CHECKOV):
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install --quiet --upgrade pip
	.tools/checkov/bin/pip install --quiet 'checkov==3.3.30'

checkov: $(CHECKOV) ## install checkov into its own venv .tools/checkov (tests/test_k8s_render.py runs it)

# --- dependency lock and SBOM (issue 11; docs/dependencies.md) ----------------------
# uv resolves for the image's platform whatever machine runs `make lock`.
UV_VERSION := 0.13.8
UV := .tools/uv/bin/uv
LOCK := requirements.lock
# UPGRADE=1: newest versions the ranges allow; otherwise the lock's pins are kept
# where they still satisfy pyproject.toml.
UPGRADE ?=
CYCLONEDX_VERSION := 7.5.0
SBOM_TOOL := .tools/sbom
SBOM ?= sbom.cdx.json

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/pip install --quiet --upgrade pip
	.tools/uv/bin/pip install --quiet 'uv==$(UV_VERSION)'

lock: $(UV) ## refresh requirements.lock (hashed pins for CPython 3.11 on Linux x86_64) from pyproject.toml; UPGRADE=1
	$(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV) pip compile --quiet --generate-hashes --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_36 --custom-compile-command 'make lock' \
	    $(if $(filter 1,$(UPGRADE)),--upgrade) --output-file $(LOCK) pyproject.toml -

# cyclonedx-py for CPython 3.11 on Linux x86_64, installed as plain files: it runs
# inside a container of the image (mounted read-only), with the image's python.
$(SBOM_TOOL)/.installed: $(INSTALLED)
	rm -rf $(SBOM_TOOL)
	$(BIN)/pip install --quiet --disable-pip-version-check --target $(SBOM_TOOL) \
	  --python-version 3.11 --platform manylinux2014_x86_64 --only-binary=:all: \
	  'cyclonedx-bom==$(CYCLONEDX_VERSION)'
	touch $@

sbom: $(SBOM_TOOL)/.installed ## CycloneDX SBOM of IMAGE:TAG's Python environment (/opt/venv) to SBOM=sbom.cdx.json
	@test -n "$(CONTAINER_ENGINE)" || { echo "make sbom: neither podman nor docker is installed" >&2; exit 1; }
	$(CONTAINER_ENGINE) run --rm --network none --read-only --user 10001:10001 \
	  -v $(CURDIR)/$(SBOM_TOOL):/sbom-tool:ro -v $(CURDIR)/pyproject.toml:/sbom-input/pyproject.toml:ro \
	  --entrypoint /opt/venv/bin/python $(IMAGE):$(TAG) -I -c \
	  'import runpy, sys; sys.path.insert(0, "/sbom-tool"); sys.argv = ["cyclonedx-py", *sys.argv[1:]]; runpy.run_module("cyclonedx_py", run_name="__main__")' \
	  environment --pyproject /sbom-input/pyproject.toml --mc-type application \
	  --output-reproducible --output-format JSON --output-file - /opt/venv/bin/python >$(SBOM).tmp
	mv $(SBOM).tmp $(SBOM)
	@echo "sbom: $(SBOM) for $(IMAGE):$(TAG)"

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
# Not part of `make test`: it runs the unit and process tests once per mutant, hours
# on 2 cores for the whole tree. A run stopped part way (Ctrl-C) goes on where it
# stopped the next time: mutmut keeps each verdict in mutants/ with its function's
# source hash and tests again only the mutants of functions that changed since.
# `make mutate-fresh` starts from nothing.
# mutmut runs `mypy` (pyproject.toml's type_check_command) from the venv, found on PATH.
# MUTATE_JOBS: mutants tested in parallel.
MUTATE_JOBS ?= 2
# MUTATE_ONLY: a shard, as mutmut names with *, e.g. 'fiboserver.worker.*' (docs/mutation.md);
# named mutants are always tested again.
MUTATE_ONLY ?=
MUTATE_INSTALLED := $(VENV)/.installed-mutate

.PHONY: mutate mutate-save mutate-fresh

$(MUTATE_INSTALLED): $(INSTALLED)
	$(BIN)/pip install --quiet -e '.[dev,mutate]'
	touch $@

# Which tests reach which function is recorded afresh each run (the stats file goes;
# the verdicts stay): mutmut would record it again for new tests only, and a function
# added or renamed since would get only those (docs/mutation.md).
# The verdicts go on across machines too: tests/mutation/verdicts.json keeps them with
# their functions' hashes, written back into an empty mutants/ before a run and saved
# after it (tests/mutation/verdicts.py).
MUTATE_RESTORE ?= yes
mutate: $(MUTATE_INSTALLED) ## mutation testing of fiboserver/ (mutmut), going on from a stopped run; prints the score and every survivor
	rm -f mutants/mutmut-stats.json
	if [ "$(MUTATE_RESTORE)" = yes ]; then $(BIN)/python -m tests.mutation.verdicts restore; fi
	set -f; PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTATE_ONLY)
	$(BIN)/python -m tests.mutation.verdicts save
	set -f; $(BIN)/python -m tests.mutation.summary $(BIN)/mutmut $(MUTATE_ONLY)

mutate-save: $(MUTATE_INSTALLED) ## keep the verdicts of a run stopped with Ctrl-C in tests/mutation/verdicts.json
	$(BIN)/python -m tests.mutation.verdicts save

mutate-fresh: $(MUTATE_INSTALLED) ## `make mutate` from nothing: every verdict of earlier runs, kept ones too, dropped
	rm -rf mutants
	$(MAKE) mutate MUTATE_RESTORE=no

# --- logs to Kibana (issue 5; README "Logs in Kibana") ------------------------------
# KIBANA_URL: e.g. after `kubectl -n logging port-forward svc/kibana 5601:5601`.
# KIBANA_CURL_ARGS: extra curl options, e.g. -u elastic:<password> or --cacert ca.crt.
KIBANA_URL ?= http://127.0.0.1:5601
KIBANA_CURL_ARGS ?=
KIBANA_OBJECTS := k8s/logging/kibana/saved-objects.ndjson
# ELASTICSEARCH_URL: e.g. after `kubectl -n logging port-forward svc/elasticsearch 9200`.
# ES_CURL_ARGS: extra curl options for it, e.g. -u elastic:<password> --cacert ca.crt.
ELASTICSEARCH_URL ?= http://127.0.0.1:9200
ES_CURL_ARGS ?=
ES_DIR := k8s/logging/elasticsearch

.PHONY: deploy-logging undeploy-logging elasticsearch-setup kibana-import opensearch

# The tests' real engine (issue 19): OpenSearch 2.19.6 embedded by tests/opensearch's
# launcher. mvn fetches the jars (~/.m2) and compiles the launcher once per version of
# tests/opensearch into /var/cache/fiboserver/opensearch-2.19.6/<hash>; `.ci/run` runs
# this before `make test`. Needs java (17) and mvn.
opensearch: $(INSTALLED) ## fetch OpenSearch's jars and build the tests' launcher (cached outside the clone)
	$(BIN)/python -m tests.support.opensearch --build

deploy-logging: ## Fluent Bit DaemonSet to namespace logging; DEMO=1 first applies the demo Elasticsearch + Kibana
	$(if $(filter 1,$(DEMO)),kubectl apply -k k8s/logging/elastic)
	kubectl apply -k k8s/logging
	kubectl -n logging rollout status daemonset/fluent-bit --timeout=5m

undeploy-logging: ## remove Fluent Bit, keep namespace logging; DEMO=1 deletes the whole namespace, demo data included
	kubectl delete -k k8s/logging -l app.kubernetes.io/name=fluent-bit --ignore-not-found
	$(if $(filter 1,$(DEMO)),kubectl delete -k k8s/logging/elastic --ignore-not-found)

# PUT <url> <file>: fails unless Elasticsearch answers {"acknowledged": true}.
es_put = out=$$(curl --silent --show-error --fail-with-body -X PUT "$(ELASTICSEARCH_URL)$(1)" \
	  -H 'Content-Type: application/json' $(ES_CURL_ARGS) --data-binary @$(2)) \
	  || { echo "elasticsearch-setup: PUT $(1) failed: $$out" >&2; exit 1; }; \
	printf '%s' "$$out" | grep -Eq '"acknowledged"[[:space:]]*:[[:space:]]*true' \
	  || { echo "elasticsearch-setup: PUT $(1) not acknowledged: $$out" >&2; exit 1; }; \
	echo "elasticsearch-setup: $(1): $$out"

elasticsearch-setup: ## ILM policy (14-day retention) and the fiboserver-* index template into ELASTICSEARCH_URL
	@$(call es_put,/_ilm/policy/fiboserver-logs,$(ES_DIR)/ilm-policy.json)
	@$(call es_put,/_index_template/fiboserver,$(ES_DIR)/index-template.json)

kibana-import: elasticsearch-setup ## Elasticsearch setup, then the data view and saved searches into Kibana at KIBANA_URL
	@out=$$(curl --silent --show-error --fail-with-body -X POST \
	  "$(KIBANA_URL)/api/saved_objects/_import?overwrite=true" \
	  -H 'kbn-xsrf: true' $(KIBANA_CURL_ARGS) --form file=@$(KIBANA_OBJECTS)) \
	  || { echo "kibana-import: request failed: $$out" >&2; exit 1; }; \
	if printf '%s' "$$out" | grep -Eq '"success"[[:space:]]*:[[:space:]]*true'; then \
	  echo "kibana-import: $$out"; \
	else \
	  echo "kibana-import: Kibana did not import everything: $$out" >&2; exit 1; \
	fi

# --- a real single-node cluster (issue 9; README "Run it on a real cluster") -------
# Upstream Kubernetes v1.34.4, etcd, containerd built from pinned Go modules
# (tools/cluster/build/*/go.mod), cached in /var/cache/fiboserver/cluster; runc, CNI
# plugins, catatonit, iptables from Debian (`.ci/run` installs them). Root only.
CLUSTER := $(BIN)/python -m tools.cluster

.PHONY: cluster-up cluster-e2e cluster-down

cluster-up: $(INSTALLED) ## start a local single-node Kubernetes (first run compiles it); kubeconfig .cluster/kubeconfig
	$(CLUSTER) up

cluster-e2e: $(INSTALLED) ## the checks on the cluster of `make cluster-up` (apply -k, rollouts under load, PDB, probes, logs)
	KUBECONFIG=$(CURDIR)/.cluster/kubeconfig $(BIN)/pytest -m cluster tests/cluster

cluster-down: $(INSTALLED) ## stop the local cluster and remove everything it made (twice is harmless)
	$(CLUSTER) down

# --- Helm chart (issue 17; README "Install with Helm") ------------------------------
# helm v4.3.2 built from its pinned Go module (tools/cluster/build/helm) into
# /var/cache/fiboserver/cluster/helm-v4.3.2 like the cluster's parts; `make helm`
# prints its path. The chart: charts/fiboserver (its README lists every value).
HELM_BIN = $(shell $(BIN)/python -m tools.cluster.helm)
DIST ?= dist
CHART_TGZ = $(DIST)/fiboserver-$(VERSION).tgz
HELM_NAMESPACE ?= cloudnative

.PHONY: helm chart helm-install helm-uninstall

helm: $(INSTALLED) ## build the pinned helm once (cached outside the clone) and print its path
	@$(BIN)/python -m tools.cluster.helm --build

chart: helm ## package charts/fiboserver as dist/fiboserver-<version>.tgz, appVersion = make print-image's tag
	$(HELM_BIN) package charts/fiboserver --version $(VERSION) --app-version $(TAG) --destination $(DIST)

helm-install: chart ## helm upgrade --install fiboserver-ENV (dev or prod) into the current context, image IMAGE:TAG
	@case "$(ENV)" in dev|prod) ;; *) echo "ENV must be dev or prod, not '$(ENV)'" >&2; exit 2;; esac
	$(if $(filter cloudnative,$(HELM_NAMESPACE)),kubectl apply -f k8s/namespace.yaml)
	$(HELM_BIN) upgrade --install fiboserver-$(ENV) $(CHART_TGZ) --namespace $(HELM_NAMESPACE) \
	  --values charts/fiboserver/values-$(ENV).yaml --set image.repository=$(IMAGE) \
	  --wait --timeout 5m

helm-uninstall: helm ## helm uninstall fiboserver-ENV (dev or prod); the namespace stays
	$(HELM_BIN) uninstall fiboserver-$(ENV) --namespace $(HELM_NAMESPACE) --wait
