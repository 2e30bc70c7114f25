# sriov-passthrough-cni: the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
# The go command: the one on PATH when it is 1.21 or later (it fetches the
# toolchain go.mod names), else bookworm-backports' Go 1.23, which
# test/toolchain.sh installs with a C compiler for -race on a fresh Debian 12.
# Debian's Go may default to GOTOOLCHAIN=local, which refuses go.mod's newer
# go line instead of fetching that toolchain.
export GOTOOLCHAIN ?= auto
ifeq ($(origin GO),undefined)
GO := $(shell bash test/toolchain.sh)
ifeq ($(GO),)
$(error test/toolchain.sh found no usable Go (see its message above))
endif
endif
# Scripts the targets run (the VM and cluster builds) call go from PATH.
export PATH := $(patsubst %/,%,$(dir $(GO))):$(PATH)
BIN := bin/sriov-passthrough-cni
AGENT_BIN := bin/sriov-passthrough-agent
# The agent with its DRA mode (pkg/agentcmd says why it is a binary of its own).
DRA_BIN := bin/sriov-passthrough-dra
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GOFLAGS_STATIC := CGO_ENABLED=0
GOTEST_FLAGS ?= -count=1

# Every Go module whose tests and vet run here. `go test ./...` stops at a
# nested go.mod, so a module missing from this list silently stops being
# tested: test/modules fails when a go.mod in the tree is in neither list.
# The root module (the plugin and its root-module tests) runs last so
# `make unit` ends with its summary.
TEST_MODULES := test/bench test/deploy test/multus test/k8s .
# Modules that are never tested or vetted here, each with its reason.
# test/k8s/components: Kubernetes, etcd and the CNI plugins, built from the
# module proxy by test/k8s/build.sh (~2 GB of dependencies); nothing of ours.
# test/k8s/components-v1.34: the same for the older kubelet of k8s-e2e's
# second pass (one go.mod holds one version of k8s.io/kubernetes).
# test/k8s/containerd: containerd v2 (CDI) for k8s-e2e's DRA pass, built
# the same way; nothing of ours.
UNTESTED_MODULES := test/k8s/components test/k8s/components-v1.34 test/k8s/containerd
# Build tags that switch files in (vet sees both sides of failpoints).
VET_TAGS := e2e,stress,failpoints,k8s

.PHONY: all build demo test unit unit-compile e2e k8s-e2e bootstrap-check bench bench-vm bench-k8s stress stress-short lint deps host-snapshot host-check clean

all: build

build:
	$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sriov-passthrough-cni
	$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(AGENT_BIN) ./cmd/sriov-passthrough-agent
	$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(DRA_BIN) ./cmd/sriov-passthrough-dra

# See SR-IOV passthrough happen on emulated igb NICs in a VM (no hardware needed).
demo:
	bash test/vm/run.sh demo

# Every test, as CI runs it: TEST_STAGES in that order, through
# test/all.sh, which builds k8s-e2e's one-node Kubernetes in the
# background (niced) from lint to k8s-e2e, and unit's -race tests
# (unit-compile) during k8s-e2e. VM end-to-end on three kernels, stress,
# a real one-node Kubernetes, then unit, kernel and integration tests.
# host-snapshot records the host first; host-check, a go test, compares it
# with the host after every stage and fails on anything a test left
# behind, so CI output still ends with go test's own summary line.
TEST_STAGES := host-snapshot lint e2e stress-short k8s-e2e unit host-check
test:
	MAKE='$(MAKE)' GO='$(GO)' TEST_STAGES='$(TEST_STAGES)' bash test/all.sh

# Debian packages the host-side tests use (apt only when one is missing).
deps:
	bash test/deps.sh

# Quick run: unit, kernel (root) and integration tests on this machine.
unit: build deps
	@set -e; for m in $(TEST_MODULES); do \
		echo "go test $$m"; \
		$(GO) -C $$m test $(GOTEST_FLAGS) -race ./...; \
	done

# What unit compiles, without running it: test/all.sh runs this in the
# background during k8s-e2e, whose passes leave the CPU mostly idle.
unit-compile:
	@set -e; for m in $(TEST_MODULES); do \
		echo "go test -exec /bin/true $$m"; \
		$(GO) -C $$m test $(GOTEST_FLAGS) -race -exec /bin/true ./...; \
	done

e2e:
	bash test/vm/run.sh e2e

# Proofs that no crash, race or bad state loses a device (root; test/stress):
# the plugin built with -tags failpoints is killed at every step, raced by
# many processes with netns deletions, fed broken records; the parsers are
# fuzzed (a crasher lands in testdata/fuzz and stays a regular test case).
# Fuzzing runs a number of inputs, not a time: with a time, Go 1.26's
# fuzzing coordinator can fail a target with a bare "context deadline
# exceeded" and no crasher when its workers are slow at the deadline, on
# a loaded machine (go.dev/issue/75804, fixed in Go 1.27). 200000 inputs
# take about 10 s per target on an idle machine here, 1000000 about 60 s.
# The stress tests run in local directory mode so their output streams.
# The run ends with "stress: operations=N kills=N teardowns=N devices_lost=0
# devices_misnamed=0" and go test's summary line. stress-short is in `test`.
STRESS_FUZZ := ./pkg/config:FuzzParse ./pkg/config:FuzzParseReserved ./pkg/config:FuzzParseArgs ./pkg/state:FuzzDecode
define run-stress
	$(GO) vet -tags stress ./test/stress
	$(GO) test -count=1 -tags failpoints ./pkg/failpoint
	@for t in $(STRESS_FUZZ); do \
		echo "fuzz $$t for $(1)"; \
		$(GO) test -run '^$$' -fuzz "^$${t##*:}\$$" -fuzztime $(1) -fuzzminimizetime 5s $${t%%:*} || exit 1; \
	done
	cd test/stress && $(GO) test -count=1 -tags stress -parallel 12 -timeout 30m -args $(2)
endef

stress:
	$(call run-stress,1000000x,-stress.long)

stress-short:
	$(call run-stress,200000x,)

# A real one-node Kubernetes (root; test/k8s): kubelet, containerd, multus and
# the scheduler hand prow job pods their PFs through deploy/. The pieces are
# built once per version into /var/cache/sriov-passthrough-cni-k8s (a cold
# build takes 15-40 min on 2 cores, the older kubelet below some 10 more,
# containerd v2 for the DRA pass some 3; test/k8s/e2e.sh builds those two
# in the background while the first pass runs); the scenarios run, then
# interrupted and failing runs must leave the host clean (TestTeardown),
# then a second cluster whose node runs the older
# kubelet runs K8S_OLD_KUBELET_SCENARIOS, then a third whose node serves
# prow/sriov through DRA (K8S_DRA=1: containerd K8S_DRA_CONTAINERD, built
# from test/k8s/containerd for its CDI, deploy/ with components/dra) runs
# the TestDRA* scenarios. Each pass ends with "k8s-e2e: kubernetes=V
# kubelet=V pods=N dra_pods=N pfs_handed_out=N devices_lost=0
# devices_misnamed=0" (the DRA pass's also names containerd and
# allocation=dra; dra_pods counts the job pods served through a claim).
#
# The older kubelet is three minors older than the control plane, the skew
# Kubernetes supports. Up to v1.36 the kubelet keys device plugins by
# resource name, from v1.37 by socket (pkg/agent/register.go): the second
# pass runs the scenarios in which the agent registers again (a restarted
# kubelet, a killed or deleted agent, an upgrade that surges: the old
# agent's stream ends after the new one registered) or the kubelet
# allocates and admits by the agent's devices.
K8S_OLD_KUBELET := v1.34.4
K8S_OLD_KUBELET_SCENARIOS := TestReadmeProwJobs TestRestartsLoseNothing \
	TestDaemonSetUpgrade TestAgentAdvertisesAndTheJobGetsTheKubeletsPF \
	TestAgentKilledLosesNothing TestAgentRegistersOnceWithARestartedKubelet \
	TestAgentThatCannotSeeNetnsReleasesNothing TestAllocateRefusesAPFThatIsNotFree \
	TestAgentKeepsAPFInAPoolNamedByAltname TestTodaysJobsThroughTheCutoverStages
empty :=
K8S_OLD_KUBELET_RUN := ^($(subst $(empty) $(empty),|,$(strip $(K8S_OLD_KUBELET_SCENARIOS))))$$
K8S_DRA_CONTAINERD := v2.4.2
k8s-e2e:
	GO=$(GO) K8S_OLD_KUBELET=$(K8S_OLD_KUBELET) K8S_OLD_KUBELET_RUN='$(K8S_OLD_KUBELET_RUN)' \
		K8S_DRA_CONTAINERD=$(K8S_DRA_CONTAINERD) bash test/k8s/e2e.sh

# ADD+DEL cost against VF count, next to host-device and the netlink floor (root).
# test/bench is its own module (the plot library stays out of the plugin's);
# host-device is a tool of that module, so it builds with the same netlink.
# BENCH_FLAGS adds or overrides flags (_output/bench/bench -h lists them).
BENCH_FLAGS ?=
bench: build
	$(GO) -C test/bench build -o $(CURDIR)/_output/bench/host-device github.com/containernetworking/plugins/plugins/main/host-device
	$(GO) -C test/bench build -o $(CURDIR)/_output/bench/bench .
	_output/bench/bench -plugin $(BIN) -host-device _output/bench/host-device -out docs $(BENCH_FLAGS)

bench-vm:
	bash test/vm/run.sh bench

# Issue 20's cluster figures, on demand (root; not in make test): two runs
# of test/k8s/run.sh (the suite's bring-up and teardown) with K8S_BENCH=1.
# The suite's node (2 PFs x 2 VFs): the README's job pod with one PF, with
# two, and without the network, 10 of each interleaved, create to Running,
# and per pod containerd's CNI setup (multus) next to our plugin's ADD.
# Then a node of 8 PFs x 256 VFs: the agent in its pod, under deploy/'s CPU
# limit, from a netlink event to its ListAndWatch send and to the kubelet.
# Each figure ends in a line "bench-k8s: ..."; docs/bench.md has them.
bench-k8s:
	K8S_BENCH=1 K8S_E2E_RUN='^TestBenchPodRunning$$' bash test/k8s/run.sh
	K8S_BENCH=1 K8S_PFS=8 K8S_VFS=256 K8S_E2E_RUN='^TestBenchAgentEvent$$' bash test/k8s/run.sh

# gofmt; go mod tidy -diff and go vet (also with VET_TAGS) in every module;
# shellcheck on every shell script in the tree (test/shellcheck.sh). vet
# sees the code as the binaries are built (CGO_ENABLED=0, -trimpath), and
# the dependencies it compiles are then the very ones that the VM stage's
# static binaries and k8s-e2e's images link: on a cold machine the ~770
# packages compile once, not twice (about 3 min of both cores).
lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	@set -e; for m in $(TEST_MODULES); do \
		echo "go vet $$m"; \
		$(GO) -C $$m mod tidy -diff; \
		$(GOFLAGS_STATIC) $(GO) -C $$m vet -trimpath ./...; \
		$(GOFLAGS_STATIC) $(GO) -C $$m vet -trimpath -tags $(VET_TAGS) ./...; \
	done
	bash test/shellcheck.sh

# The host as make test found it (test/hostcheck.sh: netns, links, mounts,
# test temp dirs, our processes, test cgroups), and the go test that fails
# on anything new at the end. Nothing else may test on the host meanwhile.
HOST_SNAPSHOT := $(CURDIR)/_output/host.snapshot
# On demand, not in make test (slow, downloads a few hundred MB): the README's
# set-up line in a fresh Debian 12 root file system, then make build and make
# unit there, each step timed.
bootstrap-check:
	bash test/bootstrap.sh

host-snapshot:
	@mkdir -p $(dir $(HOST_SNAPSHOT))
	bash test/hostcheck.sh snapshot $(HOST_SNAPSHOT)

host-check:
	SRIOVPT_HOST_SNAPSHOT=$(HOST_SNAPSHOT) $(GO) test -count=1 ./test/hostcheck

clean:
	rm -rf bin _output
