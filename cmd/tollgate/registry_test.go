package main

import (
	"context"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// TestCommandsOutsideACheckout: with no ./harnesses.yaml, commands that
// need no registry run without one, the others use the built-in registry
// and say so, and an unknown provider lists the known ones.
func TestCommandsOutsideACheckout(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	delete(c.env, "TOLLGATE_HARNESSES")
	unsetenv(t, "TOLLGATE_HARNESSES")
	t.Chdir(t.TempDir())
	ctx := context.Background()

	out, errs, code := c.run(ctx, "", "credential", "list")
	if code != 0 || strings.Contains(errs, "registry") {
		t.Fatalf("credential list: %d %s %s", code, out, errs)
	}
	if out, errs, code := c.run(ctx, "", "token", "list"); code != 0 {
		t.Fatalf("token list: %d %s %s", code, out, errs)
	}
	out, errs, code = c.run(ctx, "sk-ant-api03-outside-000000000000\n", "credential", "set", "--platform", "--provider", "anthropic", "--key-stdin")
	if code != 0 || !strings.Contains(errs, "built into tollgate") {
		t.Fatalf("credential set: %d %s %s", code, out, errs)
	}
	_, errs, code = c.run(ctx, "sk-x\n", "credential", "add", "--provider", "anthropik", "--key-stdin")
	if code == 0 || !strings.Contains(errs, `unknown provider "anthropik"`) || !strings.Contains(errs, "anthropic, ") {
		t.Fatalf("unknown provider: %d %s", code, errs)
	}
	_, errs, code = c.run(ctx, "", "credential", "bind", "--credential", "c", "--dialect", "anthropic-mesages", "--platform")
	if code == 0 || !strings.Contains(errs, `unknown dialect "anthropic-mesages"`) || !strings.Contains(errs, "anthropic-messages") {
		t.Fatalf("unknown dialect: %d %s", code, errs)
	}
	_, errs, code = c.run(ctx, "", "token", "issue", "--workspace", "w", "--project", "p", "--user", "u", "--harness", "claud")
	if code == 0 || !strings.Contains(errs, `unknown harness "claud"`) || !strings.Contains(errs, "claude-code") {
		t.Fatalf("unknown harness: %d %s", code, errs)
	}
	tok, errs, code := c.run(ctx, "", "token", "issue", "--workspace", "w", "--project", "p", "--user", "u", "--harness", "claude-code")
	if code != 0 {
		t.Fatalf("token issue: %d %s", code, errs)
	}
	out, errs, code = c.run(ctx, "", "env", "--harness", "claude-code", "--token", strings.TrimSpace(tok), "--url", "http://example.test")
	if code != 0 || !strings.Contains(out, "ANTHROPIC_BASE_URL=http://example.test/anthropic") || !strings.Contains(errs, "built into tollgate") {
		t.Fatalf("env: %d %s %s", code, out, errs)
	}
}
