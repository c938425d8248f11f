package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDependenciesPointInward enforces the package map: cmd → proxy →
// resolver/metering → registry, metering/ledger beside metering and
// never under it, internal/* leaves that import none of these, and
// frameworks at the edge. It walks `go list -deps`, so an indirect edge
// fails as well as a direct one. internal/testkit is for tests only: no
// package's own (non-test) imports may reach it.
func TestDependenciesPointInward(t *testing.T) {
	const mod = "github.com/tollgate/tollgate/"
	forbidden := map[string][]string{
		"registry": {mod + "proxy", mod + "resolver", mod + "metering", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "go.opentelemetry.io/otel/sdk", "net/http"},
		"resolver": {mod + "proxy", mod + "metering", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "go.opentelemetry.io/otel/sdk", "net/http"},
		"metering": {mod + "proxy", mod + "resolver", mod + "metering/ledger", mod + "governance", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "go.opentelemetry.io/otel/sdk", "net/http"},
		// The ledger keeps records; it is fed through metering.Sink and
		// never learns where they came from.
		"metering/ledger": {mod + "proxy", mod + "resolver", mod + "governance", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "go.opentelemetry.io/otel/sdk", "net/http"},
		// Governance decides; the proxy renders. It knows no HTTP server
		// and no credential (net/http only to send alert webhooks).
		"governance": {mod + "proxy", mod + "resolver", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "go.opentelemetry.io/otel/sdk"},
		"proxy":      {mod + "cmd", "go.opentelemetry.io/otel/sdk"},
		// Credential health is what the proxy observed of each credential:
		// it knows no HTTP stack, no store and no key.
		"health": {mod + "proxy", mod + "resolver", mod + "metering", mod + "governance", mod + "registry", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "net/http"},
		// The console is a net/http handler over the services: the proxy
		// mounts it, so it imports neither the proxy nor its framework.
		"console": {mod + "proxy", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp"},
		// The dial guard is a leaf: the proxy and the server's setup both
		// use it, so it can import neither.
		"internal/netguard": {mod + "proxy", mod + "resolver", mod + "metering", mod + "registry", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp"},
		// The audit log records what its callers describe; its Trail names
		// the resolver's writes (credentials, bindings, tokens), so it may
		// know the resolver's types, and no policy or HTTP stack: API, CLI
		// and console share it.
		"audit": {mod + "proxy", mod + "metering", mod + "governance", mod + "health", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "net/http"},
		// Any package's tests import testkit, so testkit imports none of
		// them (an import cycle otherwise).
		"internal/testkit": {mod + "proxy", mod + "resolver", mod + "metering", mod + "registry", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp"},
	}
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", mod+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, b := range bad {
				if dep == b || strings.HasPrefix(dep, b) && (strings.HasSuffix(b, "/") || strings.HasPrefix(dep, b+"/")) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
	// audit's own imports are the standard library, internal/store and
	// the resolver (whose writes Trail names).
	auditImports, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, mod+"audit").Output()
	if err != nil {
		t.Fatalf("go list audit: %v", err)
	}
	for _, imp := range strings.Fields(string(auditImports)) {
		if first, _, _ := strings.Cut(imp, "/"); strings.Contains(first, ".") && imp != mod+"internal/store" && imp != mod+"resolver" {
			t.Errorf("audit imports %s: only the standard library, internal/store and the resolver", imp)
		}
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for line := range strings.Lines(string(out)) {
		pkg, imports, _ := strings.Cut(strings.TrimSpace(line), " ")
		if slices.Contains(strings.Fields(imports), mod+"internal/testkit") {
			t.Errorf("%s imports internal/testkit outside its tests", pkg)
		}
	}
}
