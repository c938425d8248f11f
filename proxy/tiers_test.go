package proxy

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
	"github.com/tollgate/tollgate/resolver"
)

// TestEachWorkspaceGetsTheKeyItsTierSays: three workspaces in different
// projects and users call at the same time; the provider sees exactly the
// key each should get, and each record names the tier that paid.
func TestEachWorkspaceGetsTheKeyItsTierSays(t *testing.T) {
	const (
		projectKey = "sk-proj-PROJECTacmeKEY0123456789abcdef"
		userKey    = "sk-proj-USERbobKEY0123456789abcdefgh"
	)
	e := newEnv(t, envOptions{fake: upstreamtest.Config{Keys: append([]string{projectKey, userKey}, canaries...)}})
	ctx := context.Background()
	bind := func(key, tier, scope string) string {
		cr, err := e.svc.CreateCredential(ctx, resolver.CredentialSpec{Name: tier + "-" + scope, Provider: "openai", Secret: resolver.NewSecret(key)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Bind(ctx, resolver.BindingKey{Tier: tier, ScopeID: scope, Dialect: "openai-chat"}, cr.ID); err != nil {
			t.Fatal(err)
		}
		return cr.ID
	}
	projCred := bind(projectKey, resolver.TierProject, "acme")
	userCred := bind(userKey, resolver.TierUser, "bob")

	cases := []struct {
		workspace, project, user string
		key, tier, cred          string
	}{
		{"ws-acme-alice", "acme", "alice", projectKey, "project", projCred},
		{"ws-zeta-bob", "zeta", "bob", userKey, "user", userCred},
		{"ws-zeta-carol", "zeta", "carol", canaryOpenAI, "platform", ""},
	}
	var wg sync.WaitGroup
	for _, c := range cases {
		tok := e.token(c.workspace, c.project, c.user, "")
		for i := 0; i < 5; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := fmt.Sprintf(`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"%s"}]}`, c.workspace)
				resp := e.do("POST", "/openai/v1/chat/completions", tok, body)
				readAll(t, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Errorf("%s: status %d", c.workspace, resp.StatusCode)
				}
			}()
		}
	}
	wg.Wait()
	seen := map[string]map[string]int{}
	for _, r := range e.fake.Requests() {
		for _, c := range cases {
			if bytes.Contains(r.Body, []byte(c.workspace)) {
				if seen[c.workspace] == nil {
					seen[c.workspace] = map[string]int{}
				}
				seen[c.workspace][r.Key]++
			}
		}
	}
	for _, c := range cases {
		if len(seen[c.workspace]) != 1 || seen[c.workspace][c.key] != 5 {
			t.Errorf("%s: provider saw keys %v, want only its %s key 5 times", c.workspace, keysOf(seen[c.workspace]), c.tier)
		}
	}
	testkit.Eventually(t, 5*time.Second, "15 records", func() bool { return e.sink.Len() == 15 })
	for _, r := range e.sink.Records() {
		for _, c := range cases {
			if r.Workspace == c.workspace && (r.CredTier != c.tier || (c.cred != "" && r.CredentialID != c.cred)) {
				t.Errorf("%s: record says tier %s credential %s, want %s %s", c.workspace, r.CredTier, r.CredentialID, c.tier, c.cred)
			}
		}
	}
}

// keysOf names keys by their last four characters, never whole.
func keysOf(m map[string]int) []string {
	var out []string
	for k, n := range m {
		out = append(out, fmt.Sprintf("…%s×%d", k[len(k)-4:], n))
	}
	return out
}
