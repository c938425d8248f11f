# tollgate: run `make` for the list of targets.
GO        ?= go
BIN       := bin/tollgate
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
PKGS      := ./...
FUZZTIME  ?= 30s

.DEFAULT_GOAL := help

.PHONY: help
help: ## List targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/tollgate and bin/fakeprovider (static: CGO_ENABLED=0)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tollgate
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/fakeprovider ./cmd/fakeprovider

IMAGE_NAME ?= tollgate
CA_BUNDLE  ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: image
image: build ## Container image FROM scratch (no pull, builds offline): tollgate:VERSION and tollgate:latest; see Dockerfile
	rm -rf bin/image && mkdir -p bin/image/data
	cp $(CA_BUNDLE) bin/image/ca-certificates.crt
	printf 'nonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' > bin/image/passwd
	printf 'nonroot:x:65532:\n' > bin/image/group
	docker build --label org.opencontainers.image.version=$(VERSION) -t $(IMAGE_NAME):$(VERSION) -t $(IMAGE_NAME):latest .

.PHONY: run
run: build ## Run tollgate on the embedded default (SQLite under ./data, ./harnesses.yaml)
	./$(BIN) serve

# Third-party packages the tests need, test-only ones first. On a cold cache the
# test-only SDKs (proxy's SDK compatibility tests: anthropic-sdk-go, openai-go)
# are most of the compile time and its longest chain; go builds in the order it
# is given, so naming them first lets that chain overlap everything else
# instead of finishing the run alone.
TESTDEPS = { $(GO) list -f '{{join .TestImports "\n"}}{{"\n"}}{{join .XTestImports "\n"}}' ./proxy/ $(PKGS); \
	$(GO) list -deps -test -f '{{if and (not .ForTest) (not .Standard) (ne .Module.Path "github.com/tollgate/tollgate")}}{{.ImportPath}}{{end}}' $(PKGS); } \
	| grep '\.' | grep -v '^github.com/tollgate/'

# The longest test binaries, listed first so that go test builds and starts
# them first (it schedules in list order; each package still runs once): a
# cold run otherwise ended with proxy's tests, mostly waiting on deadlines,
# alone on one core while the other sat idle.
TESTFIRST = ./proxy/ ./metering/ledger/ ./governance/

.PHONY: test
# The benchmarks run once each in the same test binaries as the tests, after
# them: `-args -test.bench` reaches the binary without go test seeing -bench.
# Given -bench itself, go test would wait for every build and then run the
# binaries one at a time (for steady timings, which 1x does not need), and a
# separate `-run '^$$' -bench` pass relinks every test binary (~45 s of a cold
# run). Passed this way the packages still build and run in parallel, and
# package-list mode prints one line per package, the benchmarks' output only
# when a package fails.
test: ## every test under the race detector, then each benchmark once (CI runs `make lint` for go vet first)
	@echo "== compiling dependencies under -race, one line per package built (cold cache: a few minutes; warm: nothing to do)"
	@$(GO) build -race -v $$($(TESTDEPS))
	@echo "== tests, then each benchmark once, under -race: one line per package as it finishes"
	$(GO) test -race -count=1 $(TESTFIRST) $(PKGS) -args -test.bench=. -test.benchtime=1x
	@echo "== make test: ok"

.PHONY: test-readme
# build first: the block's own `make build` then hits the build cache
# (-trimpath keys do not depend on the directory), so its deadline measures
# the block rather than a cold compile.
test-readme: build ## The README's "five minutes from zero" block pasted into bash -euo pipefail in a copy of the tracked files, a canary as ANTHROPIC_KEY: exit 0, the exports, no key in any output (~10 s warm; needs ports 8787 and 8788 free)
	$(GO) test -tags readme -count=1 -v -timeout 6m -run TestReadmeFiveMinutes .

.PHONY: test-hostile
test-hostile: build ## Hostile-client floods against bin/tollgate on loopback (descriptors, claimed sizes, gzip bombs, bad tokens, departing clients; ~45 s); not in `make test`
	TOLLGATE_HOSTILE_BIN=$(CURDIR)/$(BIN) $(GO) test -tags hostile -count=1 -v -timeout 3m -run TestHostile ./cmd/tollgate/

.PHONY: test-postgres
test-postgres: ## The store-backed tests again on PostgreSQL (TOLLGATE_TEST_POSTGRES; console, audit and the admin API's included), the rate-limit tests on Redis (TOLLGATE_TEST_REDIS)
	TOLLGATE_TEST_POSTGRES=$${TOLLGATE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable} \
	TOLLGATE_TEST_REDIS=$${TOLLGATE_TEST_REDIS:-redis://127.0.0.1:6379/0} \
		$(GO) test -race -count=1 ./internal/... ./resolver/... ./metering/... ./governance/... ./audit/... ./console/... ./cmd/...
	@# proxy's store-backed tests only (the admin API's audit trail and policy propagation): the
	@# whole package already ran in make test and takes over a minute under -race.
	TOLLGATE_TEST_POSTGRES=$${TOLLGATE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable} \
		$(GO) test -race -count=1 -run 'TestAdmin(WritesAreAudited|AuditQuery|Policy)' ./proxy/

.PHONY: test-cluster
test-cluster: build ## 3 bin/tollgate replicas on PostgreSQL (TOLLGATE_TEST_POSTGRES) under faults: cold start, propagation, partition, outage, kill -9 (~2.5 min); not in `make test`
	TOLLGATE_TEST_POSTGRES=$${TOLLGATE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable} \
	TOLLGATE_CLUSTER_BIN=$(CURDIR)/$(BIN) TOLLGATE_FAKEPROVIDER_BIN=$(CURDIR)/bin/fakeprovider \
		$(GO) test -tags cluster -count=1 -v -timeout 9m -run 'TestCluster$(CLUSTER_RUN)' ./cmd/tollgate/

.PHONY: test-governance
test-governance: build ## Budgets and rate limits across 3 bin/tollgate replicas on PostgreSQL and Redis (TOLLGATE_TEST_POSTGRES, TOLLGATE_TEST_REDIS): budget races, kill -9 holding reservations, first contact, RPM/TPM, Redis down (~3.5 min); not in `make test`
	TOLLGATE_TEST_POSTGRES=$${TOLLGATE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable} \
	TOLLGATE_TEST_REDIS=$${TOLLGATE_TEST_REDIS:-redis://127.0.0.1:6379/0} \
	TOLLGATE_CLUSTER_BIN=$(CURDIR)/$(BIN) TOLLGATE_FAKEPROVIDER_BIN=$(CURDIR)/bin/fakeprovider \
		$(GO) test -tags cluster -count=1 -v -timeout 15m -run 'TestGov[A-Z]$(GOV_RUN)' ./cmd/tollgate/

# playwright-core goes into a directory git ignores, never package.json: the
# console needs no Node build, only this suite does.
UI_MODULES      ?= $(CURDIR)/.cache/ui
PLAYWRIGHT_CORE ?= 1.65.2

.PHONY: test-ui
test-ui: build ## The console in Debian's chromium (playwright-core): sign in, usage totals vs the API, tokens, halting a binding, a rate limit and a model rule set on the page, CSRF, audit log, keyboard-only navigation; screenshots to docs/ui/ (~30 s warm); not in `make test`
	@command -v chromium >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	@grep -qs '"version": "$(PLAYWRIGHT_CORE)"' $(UI_MODULES)/node_modules/playwright-core/package.json || \
		{ mkdir -p $(UI_MODULES) && cd $(UI_MODULES) && echo '{"private":true}' > package.json && \
		  npm install --no-save --no-audit --no-fund playwright-core@$(PLAYWRIGHT_CORE); }
	TOLLGATE_UI_MODULES=$(UI_MODULES)/node_modules TOLLGATE_UI_CHROMIUM=$$(command -v chromium) \
	TOLLGATE_UI_SHOTS=$(CURDIR)/docs/ui TOLLGATE_UI_BIN=$(CURDIR)/$(BIN) TOLLGATE_FAKEPROVIDER_BIN=$(CURDIR)/bin/fakeprovider \
		$(GO) test -tags ui -count=1 -v -timeout 3m -run TestConsoleUI ./cmd/tollgate/
	@# Screenshots a third the size, to commit, when pngquant is there (apt-get install pngquant).
	@if command -v pngquant >/dev/null; then pngquant --quality 70-95 --speed 1 --strip --skip-if-larger --force --ext .png docs/ui/*.png || true; fi

.PHONY: lint
lint: ## gofmt (fails on output) and go vet (under -race, so CI's `make test` reuses what it compiled)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -race $(PKGS)

.PHONY: check-config
check-config: ## Validate harnesses.yaml
	$(GO) run ./cmd/tollgate check-config harnesses.yaml

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 30s)
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

.PHONY: golden
golden: ## Rewrite metering golden files, then show what changed
	$(GO) test ./metering -run Golden -update
	git diff --stat testdata/

.PHONY: bench
bench: ## Micro-benchmarks, then the loopback proxy benchmark (S1, S1g = S1 with governance on, S1f = S1 with a failover binding, S2-S5; ~25 min; writes docs/bench/latest.{md,json})
	$(GO) test -run 'DoNotAllocate' -bench . -benchmem $(PKGS)
	$(GO) run ./cmd/tollgate-bench $(BENCHFLAGS)

.PHONY: bench-usage
bench-usage: ## The console Usage page's queries on 1M seeded usage records (90 days), SQLite and PostgreSQL (TOLLGATE_TEST_POSTGRES): p50/max ms each (~6 min); not in `make test`
	TOLLGATE_TEST_POSTGRES=$${TOLLGATE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable} \
	TOLLGATE_BENCH_USAGE_RECORDS=$${TOLLGATE_BENCH_USAGE_RECORDS:-1000000} \
		$(GO) test -run '^$$' -bench BenchmarkUsageAnalytics -benchtime 5x -timeout 30m ./metering/ledger/

.PHONY: bench-quick
bench-quick: ## Loopback proxy benchmark smoke run: every scenario once, ~1-2 s each (docs/bench/quick.{md,json})
	$(GO) run ./cmd/tollgate-bench -quick $(BENCHFLAGS)

.PHONY: e2e-harness
e2e-harness: ## Real Claude Code, Codex, OpenCode and Gemini CLI through tollgate to the fake provider (installs them from npm)
	$(GO) test -tags e2e -count=1 -v -timeout 45m -run TestHarness ./cmd/tollgate/

.PHONY: clean
clean: ## Remove build output and local data
	rm -rf bin data
