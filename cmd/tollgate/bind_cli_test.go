package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
	"github.com/tollgate/tollgate/resolver"
)

// TestBindSeveralCredentials: credential bind takes weighted --credential
// values and --fallback steps across providers of one dialect; bindings
// and resolve show them; no command prints a key; bad values are usage
// errors naming the flag.
func TestBindSeveralCredentials(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	const canary = "sk-ant-CANARYcli-0123456789abcdef"
	var printed []string
	run := func(stdin string, args ...string) string {
		t.Helper()
		out, errs, code := c.run(ctx, stdin, args...)
		printed = append(printed, out, errs)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
		return out
	}
	add := func(provider, key string) string {
		t.Helper()
		return strings.TrimSpace(run(key, "credential", "add", "--provider", provider, "--key-stdin"))
	}
	a := add("anthropic", canary+"-a")
	b := add("anthropic", canary+"-b")
	d := add("deepseek-anthropic", canary+"-d")
	o := add("openai", canary+"-o")

	out := run("", "credential", "bind", "--project", "acme", "--dialect", "anthropic-messages",
		"--credential", a+":3", "--credential", b, "--fallback", d)
	if want := "bound " + a + ":3," + b + " > " + d + " at project acme"; !strings.Contains(out, want) {
		t.Fatalf("bind said %q, want %q", out, want)
	}
	var bs []resolver.Binding
	if err := json.Unmarshal([]byte(run("", "credential", "bindings", "--credential", d, "--format", "json")), &bs); err != nil || len(bs) != 1 {
		t.Fatalf("bindings by the fallback's id: %v %+v", err, bs)
	}
	want := []resolver.BindCandidate{{CredentialID: a, Priority: 0, Weight: 3}, {CredentialID: b, Priority: 0, Weight: 1}, {CredentialID: d, Priority: 1, Weight: 1}}
	if got := bs[0].Credentials; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("credentials %+v, want %+v", got, want)
	}
	if table := run("", "credential", "bindings"); !strings.Contains(table, "CREDENTIALS") || !strings.Contains(table, a+":3,"+b+" > "+d) {
		t.Errorf("bindings table:\n%s", table)
	}

	run("", "credential", "disable", a)
	table := run("", "resolve", "--project", "acme", "--user", "u")
	if !strings.Contains(table, a+"(credential-disabled):3,"+b+" > "+d) {
		t.Errorf("resolve table does not show the candidates:\n%s", table)
	}
	var view struct {
		Resolutions []resolver.Resolution `json:"resolutions"`
	}
	if err := json.Unmarshal([]byte(run("", "resolve", "--project", "acme", "--user", "u", "--format", "json")), &view); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range view.Resolutions {
		if r.Harness == "" && r.Dialect == "anthropic-messages" {
			found = true
			if r.CredentialID != b || len(r.Candidates) != 3 || r.Candidates[0].Usable || r.Candidates[2].Provider != "deepseek-anthropic" {
				t.Errorf("resolve row %+v", r)
			}
		}
	}
	if !found {
		t.Fatal("no anthropic-messages row")
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--credential", a + ":0"}, "--credential " + a + ":0: the weight after the colon must be a whole number of at least 1"},
		{[]string{"--credential", a, "--fallback", b + ":x"}, "--fallback " + b + ":x: the weight"},
		{[]string{"--credential", a, "--fallback", ""}, "--fallback \"\": a credential id is missing"},
		{[]string{"--fallback", a}, "credential bind needs --credential ID"},
		{[]string{"--credential", a, "--fallback", o}, `provider "openai" of credential ` + o + ` does not speak "anthropic-messages"`},
		{[]string{"--credential", a + "," + a}, "is named twice"},
	} {
		args := append([]string{"credential", "bind", "--project", "acme", "--dialect", "anthropic-messages"}, tc.args...)
		_, errs, code := c.run(ctx, "", args...)
		printed = append(printed, errs)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d %q, want an error saying %q", tc.args, code, errs, tc.want)
		}
	}
	if all := strings.Join(printed, "\n"); strings.Contains(all, "CANARY") {
		t.Fatalf("a key was printed:\n%s", all)
	}
}
