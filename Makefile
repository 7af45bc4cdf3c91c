# hypercontainer: `make demo` sets everything up and runs a pod; `make test` runs the tests.
VENV    := .venv
PY      := $(VENV)/bin/python
AGENT   := src/hypercontainer/guest/agent
ASSETS  ?= $(or $(HYPERCONTAINER_ASSETS),/var/lib/hypercontainer/assets)

.PHONY: demo test bench assets assets-quick bootstrap bootstrap-test image lint clean cri-api cni docs fuzz soak

bootstrap:
	@tools/bootstrap.sh

# What tests, benchmarks, critest and the fuzzers use besides (podman, containerd, docker, a registry, clang, the
# Python test extras): not needed for make demo.
bootstrap-test:
	@tools/bootstrap.sh --test

build/busybox.tar: | bootstrap
	@mkdir -p build
	$(PY) -m hypercontainer.image.busybox $@

image: build/busybox.tar

assets: bootstrap
	HYPERCONTAINER_ASSETS=$(ASSETS) $(PY) -m hypercontainer.guest.assets >/dev/null
	@echo ">> guest assets ready in $(ASSETS)"

# make demo's: the agent and initramfs for our kernel if it is built, else for the distribution's VM kernel (hyperd
# then builds ours in the background and switches to it; make assets, as make test and make bench, waits for it).
assets-quick: bootstrap
	HYPERCONTAINER_ASSETS=$(ASSETS) $(PY) -m hypercontainer.guest.assets --quick >/dev/null

# The CRI API: api.proto of k8s.io/cri-api (the version cri-tools v1.37.0 uses) through the Go module proxy, checked
# against the sha256 recorded in src/hypercontainer/cri/build_api.py and compiled with grpcio-tools into
# src/hypercontainer/cri/generated/ (git-ignored; rebuilt only when the version or grpcio-tools changes).
cri-api: bootstrap
	$(PY) -m hypercontainer.cri.build_api

# CNI for hyperd's CRI sandboxes: the default network (`hypercontainer`: bridge hc-cni0, 10.66.0.0/16, portmap,
# firewall, bandwidth, loopback) into /etc/cni/net.d unless a network of that name is there (other networks, podman's
# or containerd's, are left alone and do not count). The plugins come with the bootstrap (containernetworking-plugins).
CNI_CONF_DIR ?= /etc/cni/net.d
cni: bootstrap
	$(PY) -m hypercontainer.network.cni install --by-name --conf-dir $(CNI_CONF_DIR)

demo: assets-quick image cri-api cni
	@tools/demo.sh

lint: bootstrap-test cri-api
	$(VENV)/bin/ruff check src tests bench fuzz
	$(VENV)/bin/mypy  # src/, as configured in pyproject.toml ([tool.mypy]: strict for pod/, protocol/, vm/)

test: bootstrap-test assets image cri-api cni lint
	$(MAKE) -s -C $(AGENT) OUT=$(CURDIR)/build/agent-test test VECTORS=$(CURDIR)/tests/vectors/frames.txt
	$(MAKE) -s -C $(AGENT) OUT=$(CURDIR)/build/agent-test test-sanitize VECTORS=$(CURDIR)/tests/vectors/frames.txt \
		SAN_SUPP=$(CURDIR)/fuzz/agent/known-ubsan.supp >/dev/null
	$(VENV)/bin/pytest -q -p no:cacheprovider

# Coverage-guided fuzzing, the long form (tests/test_fuzz.py, in `make test`, is the short one): every target for
# FUZZ_SECONDS (`make -j2 fuzz` runs two at once; `make fuzz-codec` one): the host's parsers with atheris (fuzz/*.py),
# the guest agent's with libFuzzer (fuzz/agent/, clang, ASan and UBSan), the REST API with schemathesis (fuzz/api.py).
# New inputs go to build/fuzz/corpus/TARGET (the agent's: build/fuzz-agent/corpus/T), crashes to
# build/fuzz/crashes/TARGET/ (build/fuzz-agent/crashes/T/): each one becomes a regression vector in
# tests/vectors/fuzz/TARGET/ (which the short pass replays) before it is fixed. See docs/fuzzing.md.
FUZZ_SECONDS ?= 600
FUZZ_PY      := codec agent_client unpack pod_spec kube auth registry archive
FUZZ_AGENT   := proto net security tar
fuzz: $(addprefix fuzz-,$(FUZZ_PY)) $(addprefix fuzz-agent_,$(FUZZ_AGENT)) fuzz-api
	@echo ">> fuzzing done; crashes, if any:"; find build/fuzz/crashes build/fuzz-agent/crashes -type f 2>/dev/null

$(addprefix fuzz-,$(FUZZ_PY)): fuzz-%: bootstrap-test
	@mkdir -p build/fuzz/corpus/$* build/fuzz/crashes/$*
	PYTHONHASHSEED=0 $(PY) -m fuzz.run $* -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
		-artifact_prefix=build/fuzz/crashes/$*/ build/fuzz/corpus/$* fuzz/corpus/$* $(wildcard tests/vectors/fuzz/$*)

fuzz-agent-build: bootstrap-test
	$(MAKE) -s -C fuzz/agent OUT=$(CURDIR)/build/fuzz-agent

$(addprefix fuzz-agent_,$(FUZZ_AGENT)): fuzz-agent_%: fuzz-agent-build
	$(MAKE) -s -C fuzz/agent OUT=$(CURDIR)/build/fuzz-agent run T=$* \
		ARGS="-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1"

fuzz-api: bootstrap-test assets
	$(PY) -m fuzz.api --max-examples 1000 --seed $$(date +%s) --seconds $(FUZZ_SECONDS)

.PHONY: fuzz-api fuzz-agent-build $(addprefix fuzz-,$(FUZZ_PY)) $(addprefix fuzz-agent_,$(FUZZ_AGENT))

bench: bootstrap-test assets image cri-api
	@$(PY) -m compileall -q src >/dev/null  # the CLI's start-up counts; PYTHONDONTWRITEBYTECODE may be set
	$(PY) bench/boot.py
	@echo
	$(PY) bench/network.py
	@echo
	$(PY) bench/runv.py
	@echo
	$(PY) bench/runv_network.py
	@echo
	$(PY) bench/images.py
	@echo
	$(PY) bench/cri_start.py
	@echo
	$(PY) bench/api_remote.py
	@echo
	$(PY) bench/density.py
	@echo
	$(PY) bench/first_run.py

# The soak's long form (tests/test_soak.py runs a short one in `make test`): 300 run/exec/logs/rm cycles beside 20
# concurrent creations, then hyperd's fds, threads, tasks, children and RSS are checked against where they were.
soak: bootstrap-test assets image cri-api
	HC_SOAK_CYCLES=300 HC_SOAK_CONCURRENT=20 $(VENV)/bin/pytest -q -s -p no:cacheprovider \
		--timeout 7200 tests/test_soak.py

# The Python client's API reference, from its docstrings: build/docs/index.html (pdoc, pinned in pyproject.toml's
# `docs` extra; installed into .venv on first use).
PDOC := $(shell sed -n 's/^docs = \["\(pdoc==[^"]*\)"\].*/\1/p' pyproject.toml)
docs: bootstrap
	@$(PY) -m pip install -q --disable-pip-version-check '$(PDOC)'
	rm -rf build/docs
	$(PY) -m pdoc -o build/docs --docformat markdown hypercontainer.client
	@echo ">> API docs in build/docs/index.html"

clean:
	rm -rf build $(AGENT)/build src/hypercontainer/cri/generated

# Kubernetes' CRI conformance suite (critest) against a private containerd with runc and with runv, side by side:
# `make critest RUNTIMES=runc`, `make critest CRITEST_FOCUS='HostIpc'`; critest-clean removes what a killed run
# left (the next `make critest` does too). See docs/critest.md.
RUNTIMES      ?= runc runv
CRITEST_FOCUS ?=
CRITEST_SKIP  ?=
CRITEST       := $(PY) tools/critest/main.py --assets "$(abspath $(ASSETS))" --runv "$(abspath $(VENV))/bin/runv"
.PHONY: critest critest-clean
critest: bootstrap-test assets
	$(CRITEST) --runtimes "$(RUNTIMES)" --focus "$(CRITEST_FOCUS)" --skip "$(CRITEST_SKIP)"

critest-clean:
	$(CRITEST) --clean

# critest against hyperd's own CRI (a private hyperd: state, sockets, registry mirrors, a CNI network of its own),
# twice: streaming over SPDY, then with -websocket-exec/-attach/-portforward; with containerd+runc through the same
# critest beside it (CRI_REFERENCE=cached: its last result if the setup is unchanged, rerun: run it again, no: none).
# Prints `critest: N passed, M failed, K skipped` per pass and the specs that pass with containerd+runc only.
# `make cri-conformance CRI_PASSES=spdy CRITEST_FOCUS='Streaming'`; cri-conformance-clean removes what a killed run
# left (the next run does too). See docs/critest.md.
CRI_PASSES    ?= spdy ws
CRI_REFERENCE ?= cached
CRI_CONFORMANCE := $(PY) tools/critest/conformance.py --assets "$(abspath $(ASSETS))" --hyperd "$(abspath $(VENV))/bin/hyperd"
.PHONY: cri-conformance cri-conformance-clean
cri-conformance: assets cri-api
	$(CRI_CONFORMANCE) --passes "$(CRI_PASSES)" --reference "$(CRI_REFERENCE)" --focus "$(CRITEST_FOCUS)" --skip "$(CRITEST_SKIP)"

cri-conformance-clean:
	$(CRI_CONFORMANCE) --clean
