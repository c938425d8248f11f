package proxy

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func (e *testEnv) admin(method, path, body string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.URL+"/admin/v1"+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer admin-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}

// TestAdminIssuesATokenWithItsEnvironment: what an agent manager hands a
// workspace comes back in one call, and the token works at once.
func TestAdminIssuesATokenWithItsEnvironment(t *testing.T) {
	e := newEnv(t, envOptions{})
	code, v := e.admin("POST", "/tokens", `{"workspace":"ws-9","project":"p","user":"u","harness":"codex","ttl":"1h","model":"gpt-5"}`)
	if code != 201 {
		t.Fatalf("issue: %d %v", code, v)
	}
	tok, _ := v["token"].(string)
	setups, _ := v["setups"].([]any)
	if !strings.HasPrefix(tok, "tgw_") || len(setups) != 1 {
		t.Fatalf("answer: %v", v)
	}
	cfg := setups[0].(map[string]any)["config"].(string)
	if !strings.Contains(cfg, `base_url = "`+e.URL+`/openai/v1"`) {
		t.Errorf("codex config does not point at tollgate:\n%s", cfg)
	}
	resp := e.do("POST", "/openai/v1/responses", tok, `{"model":"gpt-5","input":"hi"}`)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("new token refused: %d", resp.StatusCode)
	}
	id := v["info"].(map[string]any)["id"].(string)
	if code, _ := e.admin("DELETE", "/tokens/"+id, ""); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	resp = e.do("POST", "/openai/v1/responses", tok, `{"model":"gpt-5","input":"hi"}`)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("revoked token still works: %d", resp.StatusCode)
	}

	// A harness whose config needs a model is refused before any token exists.
	if code, v := e.admin("POST", "/tokens", `{"workspace":"ws-9","project":"p","user":"u","harness":"opencode"}`); code != 400 || !strings.Contains(v["error"].(map[string]any)["message"].(string), "--model") {
		t.Errorf("opencode without model: %d %v", code, v)
	}
	if code, v := e.admin("GET", "/tokens?workspace=ws-9&all=true", ""); code != 200 || len(v["tokens"].([]any)) != 1 {
		t.Errorf("list: %d %v", code, v)
	}
	if code, _ := e.admin("POST", "/tokens", `{"workspace":"x","colour":"red"}`); code != 400 {
		t.Errorf("unknown field accepted: %d", code)
	}
	req, _ := http.NewRequest("GET", e.URL+"/admin/v1/tokens", nil)
	req.Header.Set("Authorization", "Bearer wrong")
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("wrong admin token: %d", resp.StatusCode)
	}
}

// TestAdminCredentialsBindingsAndResolution drive the tiers over HTTP.
func TestAdminCredentialsBindingsAndResolution(t *testing.T) {
	e := newEnv(t, envOptions{})
	code, cr := e.admin("POST", "/credentials", `{"provider":"openai","name":"acme","key":"sk-proj-ACMEkey-0123456789abcdef"}`)
	if code != 201 {
		t.Fatalf("create: %d %v", code, cr)
	}
	if _, leaked := cr["key"]; leaked || cr["last4"] != "cdef" {
		t.Errorf("credential answer: %v", cr)
	}
	id := cr["id"].(string)
	if code, v := e.admin("POST", "/bindings", `{"tier":"project","scope_id":"acme","dialect":"anthropic-messages","credential_id":"`+id+`"}`); code != 400 {
		t.Errorf("openai key bound to anthropic: %d %v", code, v)
	}
	if code, v := e.admin("POST", "/bindings", `{"tier":"project","scope_id":"acme","dialect":"openai-chat","credential_id":"`+id+`","active":false}`); code != 201 || v["active"] != false {
		t.Fatalf("bind inactive: %d %v", code, v)
	}
	code, v := e.admin("GET", "/resolution?project=acme&user=u", "")
	if code != 200 {
		t.Fatalf("resolution: %d", code)
	}
	found := false
	for _, r := range v["resolutions"].([]any) {
		m := r.(map[string]any)
		if m["dialect"] == "openai-chat" && m["harness"] == "" {
			found = true
			if m["source"] != "halted" || m["reason"] != "binding-inactive" {
				t.Errorf("row = %v", m)
			}
		}
	}
	if !found {
		t.Fatalf("no dialect-wide openai-chat row: %v", v)
	}
	if code, _ := e.admin("POST", "/bindings/activate", `{"tier":"project","scope_id":"acme","dialect":"openai-chat"}`); code != 200 {
		t.Fatalf("activate: %d", code)
	}
	if code, _ := e.admin("DELETE", "/credentials/cred_nope", ""); code != 404 {
		t.Errorf("delete unknown: %d", code)
	}
}
