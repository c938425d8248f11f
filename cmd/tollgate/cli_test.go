package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// flagLine is a flag in -h output: "  -name ...".
var flagLine = regexp.MustCompile(`(?m)^  -([a-z-]+)`)

func helpFlags(t *testing.T, args ...string) (map[string]bool, string) {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(context.Background(), args, nil, &out, &errb); code != 0 {
		t.Fatalf("%v: exit %d, stderr %s", args, code, errb.String())
	}
	text := out.String() + errb.String()
	got := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(text, -1) {
		got[m[1]] = true
	}
	return got, text
}

// TestSubcommandHelp: -h and --help print usage and exit 0 at every level,
// a subcommand lists only the flags it uses, and the top-level usage says
// what credential deactivate needs.
func TestSubcommandHelp(t *testing.T) {
	for _, args := range [][]string{{"credential", "--help"}, {"token", "-h"}, {"check-config", "-h"}, {"env", "--help"}} {
		helpFlags(t, args...)
	}
	got, text := helpFlags(t, "credential", "deactivate", "-h")
	for _, want := range []string{"dialect", "platform", "project", "user", "harness"} {
		if !got[want] {
			t.Errorf("credential deactivate -h lacks -%s:\n%s", want, text)
		}
	}
	for _, unused := range []string{"provider", "key-stdin", "base-url", "addr", "spool", "stream-idle-timeout", "master-key", "admin-token"} {
		if got[unused] {
			t.Errorf("credential deactivate -h lists -%s, which it does not use:\n%s", unused, text)
		}
	}
	_, top := helpFlags(t, "help")
	if !strings.Contains(top, "tollgate credential deactivate --dialect D (--platform | --project P | --user U)") {
		t.Errorf("the usage does not say what credential deactivate needs:\n%s", top)
	}
	if !strings.Contains(top, "tollgate env --harness H --token T [--url URL] [--model M] [--dialect D] [--format shell|json]") {
		t.Errorf("the usage omits env's flags:\n%s", top)
	}
}

// TestSynopsisNamesEveryFlag: each command's -h lists the flags its
// synopsis names and, past the shared settings, no other.
func TestSynopsisNamesEveryFlag(t *testing.T) {
	shared := map[string]bool{"db": true, "master-key-file": true, "log-level": true, "harnesses": true, "allow-http-base-url": true, "allow-private-base-url": true}
	for _, c := range commands {
		if c.name == "version" {
			continue
		}
		got, text := helpFlags(t, append(strings.Fields(c.name), "-h")...)
		named := newCommandFlags(newFlags(c.name, nil)).names
		for n := range named {
			if !got[n] {
				t.Errorf("%s: the synopsis names --%s but -h does not list it:\n%s", c.name, n, text)
			}
		}
		if c.name == "serve" {
			continue // every server setting is serve's
		}
		for n := range got {
			if !named[n] && !shared[n] {
				t.Errorf("%s: -h lists -%s but the synopsis does not name it", c.name, n)
			}
		}
	}
}

// TestEnvChecksItsInput: env refuses what cannot work, takes the URL from
// TOLLGATE_PUBLIC_URL, and --verify catches a token for another harness.
func TestEnvChecksItsInput(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	tok, errs, code := c.run(ctx, "", "token", "issue", "--workspace", "w", "--project", "p", "--user", "u", "--harness", "codex")
	tok = strings.TrimSpace(tok)
	if code != 0 {
		t.Fatalf("token issue: %s", errs)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--harness", "codex", "--token", tok, "--url", "ftp://x"}, "http(s) URL"},
		{[]string{"--harness", "codex", "--token", "not-a-token", "--url", "http://x"}, "not a tollgate workspace token"},
		{[]string{"--harness", "claude-code", "--token", tok, "--url", "http://x", "--verify"}, `limited to harness "codex"`},
	} {
		if out, errs, code := c.run(ctx, "", append([]string{"env"}, tc.args...)...); code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("env %v: %d %s %s; want an error with %q", tc.args, code, out, errs, tc.want)
		}
	}
	c.env["TOLLGATE_PUBLIC_URL"] = "https://tollgate.example"
	out, errs, code := c.run(ctx, "", "env", "--harness", "codex", "--token", tok, "--verify")
	if code != 0 || !strings.Contains(out, "https://tollgate.example") {
		t.Fatalf("env with TOLLGATE_PUBLIC_URL: %d %s %s", code, out, errs)
	}
}

// TestEnvWritesConfigFiles: --write DIR writes the harness's config file
// under DIR, and replaces one only with --force.
func TestEnvWritesConfigFiles(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	home := t.TempDir()
	tok := "tgw_" + strings.Repeat("A", 43)
	args := []string{"env", "--harness", "codex", "--token", tok, "--url", "http://example.test", "--write", home}
	if out, errs, code := c.run(ctx, "", args...); code != 0 {
		t.Fatalf("env --write: %d %s %s", code, out, errs)
	}
	path := filepath.Join(home, ".codex", "config.toml")
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), "http://example.test") {
		t.Fatalf("config file: %v %s", err, b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("config file mode %v, want 0600", fi.Mode().Perm())
	}
	os.WriteFile(path, []byte("mine\n"), 0o600)
	if _, errs, code := c.run(ctx, "", args...); code == 0 || !strings.Contains(errs, "--force") {
		t.Fatalf("env --write over an existing file: %d %s", code, errs)
	}
	if b, _ := os.ReadFile(path); string(b) != "mine\n" {
		t.Fatalf("the existing file was replaced without --force")
	}
	if _, errs, code := c.run(ctx, "", append(args, "--force")...); code != 0 {
		t.Fatalf("env --write --force: %d %s", code, errs)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "http://example.test") {
		t.Fatalf("--force did not replace the file: %s", b)
	}
}

// TestEnvVerifiesByDefault: with the database there, env looks the token
// up without being asked and refuses one issued for another harness or
// revoked; --no-verify checks only its form (issue 15 B9).
func TestEnvVerifiesByDefault(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	issued, errs, code := c.run(ctx, "", "token", "issue", "--workspace", "w", "--project", "p", "--user", "u", "--harness", "codex")
	if code != 0 {
		t.Fatalf("token issue: %s", errs)
	}
	tok := strings.TrimSpace(issued)
	env := []string{"env", "--harness", "claude-code", "--token", tok, "--url", "http://x"}
	if out, errs, code := c.run(ctx, "", env...); code == 0 || !strings.Contains(errs, `limited to harness "codex", not "claude-code"`) || out != "" {
		t.Errorf("env with another harness's token: exit %d, stdout %q, stderr %s; want it refused", code, out, errs)
	}
	if out, errs, code := c.run(ctx, "", append(env, "--no-verify")...); code != 0 || !strings.Contains(out, "ANTHROPIC_AUTH_TOKEN="+tok) || errs != "" {
		t.Errorf("env --no-verify: exit %d, stdout %q, stderr %q; want the exports and no note", code, out, errs)
	}
	unknown := "tgw_" + strings.Repeat("A", 43)
	if _, errs, code := c.run(ctx, "", "env", "--harness", "codex", "--token", unknown, "--url", "http://x"); code == 0 || !strings.Contains(errs, "--token is unknown to the database") {
		t.Errorf("env with an unknown token: exit %d, stderr %s; want it refused", code, errs)
	}
	list, _, _ := c.run(ctx, "", "token", "list", "--format", "json")
	var toks []struct{ ID string }
	if err := json.Unmarshal([]byte(list), &toks); err != nil || len(toks) != 1 {
		t.Fatalf("token list: %v %s", err, list)
	}
	if _, errs, code := c.run(ctx, "", "token", "revoke", toks[0].ID); code != 0 {
		t.Fatalf("token revoke: %s", errs)
	}
	if _, errs, code := c.run(ctx, "", "env", "--harness", "codex", "--token", tok, "--url", "http://x"); code == 0 || !strings.Contains(errs, "--token is revoked") {
		t.Errorf("env with a revoked token: exit %d, stderr %s; want it refused", code, errs)
	}
	if _, errs, code := c.run(ctx, "", append(env, "--verify", "--no-verify")...); code != 2 || !strings.Contains(errs, "choose one") {
		t.Errorf("env --verify --no-verify: exit %d, stderr %s; want a usage error", code, errs)
	}
}

// TestEnvWithoutDatabase: with no database to ask, env prints the exports
// and one stderr line saying the token was checked for form only and why,
// and creates no database; --verify refuses instead.
func TestEnvWithoutDatabase(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	db := c.env["TOLLGATE_DB"]
	tok := "tgw_" + strings.Repeat("A", 43)
	env := []string{"env", "--harness", "claude-code", "--token", tok, "--url", "http://x"}
	out, errs, code := c.run(ctx, "", env...)
	if code != 0 || !strings.Contains(out, "ANTHROPIC_AUTH_TOKEN="+tok) {
		t.Fatalf("env without a database: exit %d, stdout %q, stderr %s; want the exports", code, out, errs)
	}
	if lines := strings.Split(strings.TrimSpace(errs), "\n"); len(lines) != 1 || !strings.Contains(errs, "checked for form only") || !strings.Contains(errs, "no database at "+db) {
		t.Errorf("env without a database: stderr %q; want one note naming %s", errs, db)
	}
	if _, err := os.Stat(db); err == nil {
		t.Errorf("env created the database %s", db)
	}
	if _, errs, code := c.run(ctx, "", append(env, "--verify")...); code == 0 || !strings.Contains(errs, "--verify needs the database") {
		t.Errorf("env --verify without a database: exit %d, stderr %s; want it refused", code, errs)
	}
	// Nothing listens on port 1: a PostgreSQL that does not answer.
	c.env["TOLLGATE_DB"] = "postgres://postgres@127.0.0.1:1/none?sslmode=disable"
	out, errs, code = c.run(ctx, "", env...)
	if code != 0 || !strings.Contains(out, "ANTHROPIC_AUTH_TOKEN="+tok) || !strings.Contains(errs, "checked for form only") || !strings.Contains(errs, "did not answer") {
		t.Errorf("env with PostgreSQL down: exit %d, stdout %q, stderr %s; want the exports and a note", code, out, errs)
	}
	if _, errs, code := c.run(ctx, "", append(env, "--verify")...); code == 0 || strings.Contains(errs, "checked for form only") {
		t.Errorf("env --verify with PostgreSQL down: exit %d, stderr %s; want it refused", code, errs)
	}
}
