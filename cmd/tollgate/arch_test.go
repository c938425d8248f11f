package main

import (
	"os"
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

// TestBinaryKeepsDeadCodeOut guards two things that cost tollgate a third
// of its size and several MB of idle RSS before they were removed: a call
// to reflect.Value.MethodByName (text/template's executor has one) makes
// the linker keep every exported method of every type, and the official
// OTLP/HTTP exporter links gRPC. The linker's dependency dump says whether
// either came back, whichever package brought it.
func TestBinaryKeepsDeadCodeOut(t *testing.T) {
	if testing.Short() {
		t.Skip("links the binary")
	}
	out, err := exec.Command("go", "build", "-ldflags=-dumpdep", "-o", os.DevNull, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "<ReflectMethod>") {
			t.Errorf("the linker keeps every exported method because of: %s", strings.TrimSpace(line))
		}
	}
	deps, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(deps)) {
		if strings.HasPrefix(dep, "google.golang.org/grpc") {
			t.Errorf("tollgate links %s", dep)
			break
		}
	}
}
