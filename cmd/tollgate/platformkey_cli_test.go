package main

import (
	"context"
	"encoding/json"
	"os/user"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/audit"
)

// TestCLIDeletesPlatformKey: "credential delete --platform --provider P"
// removes the key "credential set" set, records platform_key.delete by the
// OS user, refuses a second removal and an unknown provider by name
// without recording them, and needs both flags.
func TestCLIDeletesPlatformKey(t *testing.T) {
	forEachCLIEngine(t, "tg_pkdel_", func(t *testing.T, c *cli) {
		ctx := context.Background()
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		const key = "sk-proj-CLIplatformdelete-0123456789"
		out, errs, code := c.run(ctx, key, "credential", "set", "--platform", "--provider", "openai", "--key-stdin")
		if code != 0 {
			t.Fatalf("set: %d %s", code, errs)
		}
		id := strings.Fields(out)[2] // "platform credential ID set for ..."
		out, errs, code = c.run(ctx, "", "credential", "delete", "--platform", "--provider", "openai")
		if code != 0 || out != "platform key "+id+" of openai deleted\n" {
			t.Fatalf("delete: %d %q %s", code, out, errs)
		}
		out, _, _ = c.run(ctx, "", "credential", "list", "--format", "json")
		if strings.Contains(out, id) {
			t.Errorf("still listed: %s", out)
		}
		out, _, _ = c.run(ctx, "", "credential", "bindings", "--format", "json")
		if strings.Contains(out, `"platform"`) {
			t.Errorf("platform bindings left: %s", out)
		}
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--platform", "--provider", "openai"}, `provider "openai" has no platform key`},
			{[]string{"--platform", "--provider", "nope"}, `provider "nope" is not known here (known: anthropic, `},
			{[]string{"--platform"}, "--platform and --provider P"},
			{[]string{"--provider", "openai"}, "--platform and --provider P"},
			{[]string{"--platform", "--provider", "openai", "cred_x"}, "--platform and --provider P"},
		} {
			_, errs, code := c.run(ctx, "", append([]string{"credential", "delete"}, tc.args...)...)
			if code == 0 || !strings.Contains(errs, tc.want) {
				t.Errorf("delete %v: exit %d, %q; want a refusal with %q", tc.args, code, errs, tc.want)
			}
		}
		out, errs, code = c.run(ctx, "", "audit", "--format", "json")
		var p audit.Page
		if err := json.Unmarshal([]byte(out), &p); code != 0 || err != nil {
			t.Fatalf("audit: %d %s %v", code, errs, err)
		}
		if len(p.Entries) != 2 {
			t.Fatalf("%d audit entries, want set and delete: %+v", len(p.Entries), p.Entries)
		}
		e := p.Entries[0]
		if e.Action != "platform_key.delete" || e.Target != id || e.Change["provider"] != "openai" ||
			e.Actor != (audit.Actor{Kind: audit.KindCLI, ID: u.Username}) || e.Source != audit.SourceCLI {
			t.Errorf("entry %+v, want platform_key.delete on %s by %s", e, id, u.Username)
		}
		if strings.Contains(out, key) {
			t.Error("the key is in the audit log")
		}
	})
}
