package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependenciesPointInward enforces the package map: cmd → proxy →
// resolver/metering → registry, and frameworks stay at the edge. It walks
// `go list -deps`, so an indirect edge fails as well as a direct one.
func TestDependenciesPointInward(t *testing.T) {
	const mod = "github.com/tollgate/tollgate/"
	forbidden := map[string][]string{
		"registry": {mod + "proxy", mod + "resolver", mod + "metering", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "go.opentelemetry.io/otel/sdk", "net/http"},
		"resolver": {mod + "proxy", mod + "metering", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "go.opentelemetry.io/otel/sdk", "net/http"},
		"metering": {mod + "proxy", mod + "resolver", mod + "cmd", "github.com/gofiber/", "github.com/valyala/fasthttp", "go.opentelemetry.io/otel/sdk", "net/http"},
		"proxy":    {mod + "cmd", "go.opentelemetry.io/otel/sdk"},
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
}
