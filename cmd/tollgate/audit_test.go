package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// TestCLIWritesAreAudited: every CLI write makes exactly one entry, by the
// OS user from "cli", with its action and target; a refused write makes
// none; tollgate audit lists them with filters, as a table or JSON; no key
// in any spelling is printed or recorded.
func TestCLIWritesAreAudited(t *testing.T) {
	forEachCLIEngine(t, "tg_audit_", testCLIWritesAreAudited)
}

// forEachCLIEngine runs f with a CLI on a SQLite file and, with
// TOLLGATE_TEST_POSTGRES, on a fresh PostgreSQL schema named from prefix.
func forEachCLIEngine(t *testing.T, prefix string, f func(t *testing.T, c *cli)) {
	newOn := func(t *testing.T, dbURL string) *cli {
		_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
		c := newCLI(t, fakeURL)
		if dbURL != "" {
			c.env["TOLLGATE_DB"] = dbURL
		}
		return c
	}
	t.Run("sqlite", func(t *testing.T) { f(t, newOn(t, "")) })
	t.Run("postgres", func(t *testing.T) {
		if pg := os.Getenv("TOLLGATE_TEST_POSTGRES"); pg != "" {
			f(t, newOn(t, testkit.PostgresSchema(t, pg, prefix)))
		} else {
			t.Skip("TOLLGATE_TEST_POSTGRES is not set")
		}
	})
}

func testCLIWritesAreAudited(t *testing.T, c *cli) {
	ctx := context.Background()
	const canary = "zz-CANARYcliaudit-8e2b4d6f1a3c5e7090"
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	var printed []string
	run := func(stdin string, args ...string) (string, string, int) {
		t.Helper()
		out, errs, code := c.run(ctx, stdin, args...)
		printed = append(printed, out, errs)
		return out, errs, code
	}
	ok := func(stdin string, args ...string) string {
		t.Helper()
		out, errs, code := run(stdin, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
		return out
	}
	page := func(args ...string) audit.Page {
		t.Helper()
		var p audit.Page
		if err := json.Unmarshal([]byte(ok("", append([]string{"audit", "--format", "json"}, args...)...)), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	n := 0
	expect := func(what, action, target string) audit.Entry {
		t.Helper()
		p := page()
		if action == "" {
			if len(p.Entries) != n {
				t.Fatalf("%s: refused, yet %d entries (want %d)", what, len(p.Entries), n)
			}
			return audit.Entry{}
		}
		n++
		if len(p.Entries) != n {
			t.Fatalf("%s: %d entries, want %d", what, len(p.Entries), n)
		}
		e := p.Entries[0]
		if e.Action != action || e.Target != target || e.Actor != (audit.Actor{Kind: audit.KindCLI, ID: u.Username}) || e.Source != audit.SourceCLI {
			t.Fatalf("%s: entry %+v, want %s on %s by %s from cli", what, e, action, target, u.Username)
		}
		return e
	}

	tok := strings.TrimSpace(ok("", "token", "issue", "--workspace", "ws", "--project", "p", "--user", "u"))
	printed = nil // the token is printed once, by design; from here nothing may show it
	var toks []struct {
		ID string `json:"id"`
	}
	json.Unmarshal([]byte(ok("", "token", "list", "--format", "json")), &toks)
	if len(toks) != 1 {
		t.Fatalf("tokens: %v", toks)
	}
	expect("token issue", "token.issue", toks[0].ID)
	ok("", "token", "revoke", toks[0].ID)
	expect("token revoke", "token.revoke", toks[0].ID)

	name := hex.EncodeToString([]byte(canary))
	cred := strings.TrimSpace(ok(canary, "credential", "add", "--provider", "anthropic", "--key-stdin", "--name", name))
	if e := expect("credential add", "credential.create", cred); e.Change["name"] != audit.Redacted || e.Change["provider"] != "anthropic" {
		t.Errorf("credential.create change %v", e.Change)
	}
	out := ok(base64.URLEncoding.EncodeToString([]byte(canary)), "credential", "set", "--platform", "--provider", "openai", "--key-stdin")
	platform := strings.Fields(out)[2] // "platform credential ID set for ..."
	expect("credential set", "platform_key.set", platform)
	for _, verb := range []string{"disable", "enable"} {
		ok("", "credential", verb, cred)
		expect(verb, "credential."+verb, cred)
	}
	scope := []string{"--user", "u1", "--dialect", "anthropic-messages"}
	ok("", append([]string{"credential", "bind", "--credential", cred}, scope...)...)
	if e := expect("bind", "binding.bind", "user:u1/anthropic-messages"); e.Change["active"] != true {
		t.Errorf("binding.bind change %v", e.Change)
	}
	for _, verb := range []string{"deactivate", "activate", "unbind"} {
		ok("", append([]string{"credential", verb}, scope...)...)
		expect(verb, "binding."+verb, "user:u1/anthropic-messages")
	}
	ok("", "credential", "delete", cred)
	expect("delete", "credential.delete", cred)
	oldFile := filepath.Join(t.TempDir(), "old.key")
	os.WriteFile(oldFile, []byte(testMasterKey+"\n"), 0o600)
	const newKey = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
	c.env["TOLLGATE_MASTER_KEY"] = newKey
	ok("", "credential", "rotate-key", "--from-key-file", oldFile)
	expect("rotate-key", "credential.rotate_key", "*")

	for _, tc := range []struct {
		noun string
		set  []string
	}{
		{"budget", []string{"budget", "set", "--project", "acme", "--cost", "50", "--window", "month"}},
		{"limit", []string{"limit", "set", "--workspace", "ws-42", "--rpm", "60"}},
		{"model_rule", []string{"models", "deny", "--project", "acme", "gpt-4*"}},
	} {
		id, verb := mustPolicy(t, c, tc.set...)
		if e := expect(tc.set[0]+" set", tc.noun+".set", id); e.Change["result"] != verb || e.Change["scope_id"] == nil {
			t.Errorf("%s.set change %v", tc.noun, e.Change)
		}
		mustPolicy(t, c, tc.set...)
		if e := expect(tc.set[0]+" set again", tc.noun+".set", id); e.Change["result"] != "unchanged" {
			t.Errorf("%s.set again: change %v", tc.noun, e.Change)
		}
		if _, _, code := run("", tc.set[0], "delete", "nope"); code == 0 {
			t.Fatalf("%s delete nope succeeded", tc.set[0])
		}
		expect(tc.set[0]+" delete nope", "", "")
		ok("", tc.set[0], "delete", id)
		expect(tc.set[0]+" delete", tc.noun+".delete", id)
	}

	for _, args := range [][]string{
		{"budget", "set", "--project", "acme", "--window", "month"},
		{"token", "revoke", "tok_nope"},
		{"credential", "disable", "cred_nope"},
		{"credential", "delete", cred},
		{"credential", "add", "--provider", "nope", "--key-stdin"},
		{"credential", "unbind", "--user", "u1", "--dialect", "anthropic-messages"},
		{"credential", "bind", "--credential", "cred_nope", "--user", "u1", "--dialect", "anthropic-messages"},
	} {
		if _, _, code := run(canary, args...); code == 0 {
			t.Fatalf("%v succeeded", args)
		}
		expect(strings.Join(args, " "), "", "")
	}

	if got := len(page("--action", "credential.").Entries); got != 5 {
		t.Errorf("--action credential.: %d entries, want 5", got)
	}
	if got := len(page("--target", cred).Entries); got != 4 {
		t.Errorf("--target %s: %d entries, want 4", cred, got)
	}
	if got := len(page("--actor-kind", "api").Entries); got != 0 {
		t.Errorf("--actor-kind api: %d entries, want 0", got)
	}
	first := page("--limit", "4")
	if len(first.Entries) != 4 || first.Next == "" {
		t.Fatalf("--limit 4: %+v", first)
	}
	if rest := page("--limit", "100", "--cursor", first.Next); len(rest.Entries) != n-4 {
		t.Errorf("after the cursor: %d entries, want %d", len(rest.Entries), n-4)
	}
	table, more, _ := run("", "audit", "--action", "binding", "--limit", "2")
	if lines := strings.Split(strings.TrimSpace(table), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "AT") ||
		!strings.Contains(lines[1], "binding.unbind") || !strings.Contains(lines[1], "cli:"+u.Username) || !strings.Contains(more, "--cursor") {
		t.Errorf("table:\n%s\n%s", table, more)
	}
	for args, want := range map[string]string{
		"--limit 0x":        `limit "0x"`,
		"--actor-kind bot":  `actor_kind "bot"`,
		"--from someday":    `from: "someday"`,
		"--format yaml":     `unknown format "yaml"`,
		"--cursor whatever": `cursor "whatever"`,
	} {
		_, errs, code := run("", append([]string{"audit"}, strings.Fields(args)...)...)
		if code != 2 || !strings.Contains(errs, want) {
			t.Errorf("audit %s: exit %d %q, want a usage error naming %q", args, code, errs, want)
		}
	}

	all := strings.Join(printed, "\n")
	for _, f := range []string{canary, name, base64.URLEncoding.EncodeToString([]byte(canary)), url.QueryEscape(canary), tok, newKey, testMasterKey} {
		if strings.Contains(all, f) {
			t.Errorf("%q was printed or recorded", f)
		}
	}
}
