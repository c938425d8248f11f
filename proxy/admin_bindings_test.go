package proxy

import (
	"strings"
	"testing"
)

// A binding of several credentials, of two providers that speak one
// dialect, over the admin API: bound, listed and viewed with every
// candidate, the secrets of none in any answer.
func TestAdminBindingCandidates(t *testing.T) {
	e := newEnv(t, envOptions{})
	// Its call returns the body as sent, for the canary check.
	pe := &policyAdminEnv{testEnv: e}
	const canary = "sk-ant-CANARYalternate-0123456789"
	var bodies []string
	call := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		code, raw := pe.call(method, path, body)
		bodies = append(bodies, raw)
		return code, policyAnswer(t, raw)
	}
	newCred := func(provider, key string) string {
		t.Helper()
		code, v := call("POST", "/credentials", `{"provider":"`+provider+`","key":"`+key+`"}`)
		if code != 201 {
			t.Fatalf("create %s: %d %v", provider, code, v)
		}
		return v["id"].(string)
	}
	primary := newCred("anthropic", canary+"-primary")
	compat := newCred("deepseek-anthropic", canary+"-compat")
	other := newCred("openai", canary+"-openai")

	key := `"tier":"project","scope_id":"acme","dialect":"anthropic-messages"`
	code, v := call("POST", "/bindings", `{`+key+`,"credentials":[{"id":"`+primary+`"},{"id":"`+compat+`"}]}`)
	if code != 201 || v["credential_id"] != primary {
		t.Fatalf("bind two: %d %v", code, v)
	}
	creds := v["credentials"].([]any)
	if len(creds) != 2 {
		t.Fatalf("credentials: %v", creds)
	}
	// A plain list is a failover chain: priorities follow the order.
	for i, id := range []string{primary, compat} {
		c := creds[i].(map[string]any)
		if c["id"] != id || c["priority"] != float64(i) || c["weight"] != float64(1) {
			t.Errorf("credentials[%d] = %v", i, c)
		}
	}

	code, v = call("GET", "/resolution?project=acme&user=u", "")
	if code != 200 {
		t.Fatalf("resolution: %d %v", code, v)
	}
	var row map[string]any
	for _, r := range v["resolutions"].([]any) {
		if m := r.(map[string]any); m["dialect"] == "anthropic-messages" && m["harness"] == "" {
			row = m
		}
	}
	cands, _ := row["candidates"].([]any)
	if row["source"] != "project" || row["credential_id"] != primary || len(cands) != 2 {
		t.Fatalf("view row: %v", row)
	}
	if c := cands[1].(map[string]any); c["credential_id"] != compat || c["provider"] != "deepseek-anthropic" || c["usable"] != true {
		t.Errorf("view candidate: %v", c)
	}

	// The primary disabled: the compatible endpoint pays, the view says why.
	if code, _ := call("POST", "/credentials/"+primary+"/disable", ""); code != 200 {
		t.Fatal("disable")
	}
	_, v = call("GET", "/resolution?project=acme&user=u", "")
	for _, r := range v["resolutions"].([]any) {
		if m := r.(map[string]any); m["dialect"] == "anthropic-messages" && m["harness"] == "" {
			first := m["candidates"].([]any)[0].(map[string]any)
			if m["source"] != "project" || m["credential_id"] != compat || first["usable"] != false || first["reason"] != "credential-disabled" {
				t.Errorf("view with the primary disabled: %v", m)
			}
		}
	}

	// Weighted, at one priority; the old single form still answers with
	// credentials.
	code, v = call("POST", "/bindings", `{`+key+`,"credentials":[{"id":"`+primary+`","priority":0,"weight":3},{"id":"`+compat+`","priority":0,"weight":1}]}`)
	if code != 201 {
		t.Fatalf("bind weighted: %d %v", code, v)
	}
	if c := v["credentials"].([]any)[1].(map[string]any); c["priority"] != float64(0) || c["weight"] != float64(1) {
		t.Errorf("weighted credentials: %v", v["credentials"])
	}
	code, v = call("GET", "/bindings?credential_id="+compat, "")
	if bs := v["bindings"].([]any); code != 200 || len(bs) != 1 || len(bs[0].(map[string]any)["credentials"].([]any)) != 2 {
		t.Fatalf("list by the alternate: %d %v", code, v)
	}
	code, v = call("POST", "/bindings", `{`+key+`,"credential_id":"`+compat+`"}`)
	if creds := v["credentials"].([]any); code != 201 || len(creds) != 1 || creds[0].(map[string]any)["id"] != compat {
		t.Fatalf("single form: %d %v", code, v)
	}

	for _, tc := range []struct{ name, body, msg string }{
		{"Both", `{` + key + `,"credential_id":"` + primary + `","credentials":[{"id":"` + compat + `"}]}`, "credential_id or credentials, not both"},
		{"Empty", `{` + key + `,"credentials":[]}`, "at least one credential"},
		{"WeightZero", `{` + key + `,"credentials":[{"id":"` + primary + `"},{"id":"` + compat + `","weight":0}]}`, "credentials[1]: weight must be at least 1"},
		{"UnknownField", `{` + key + `,"credentials":[{"id":"` + primary + `","prio":1}]}`, `unknown field "prio"`},
		{"Duplicate", `{` + key + `,"credentials":[{"id":"` + primary + `"},{"id":"` + primary + `"}]}`, "credentials[1]: credential " + primary + " is named twice"},
		{"Ranges", `{` + key + `,"credentials":[{"id":"` + primary + `","priority":-2},{"id":"` + compat + `","weight":5000}]}`, "credentials[0]: priority -2 is not between 0 and 1000; credentials[1]: weight 5000 is not between 1 and 1000"},
		{"AlternateOfAnotherDialect", `{` + key + `,"credentials":[{"id":"` + primary + `"},{"id":"` + other + `"}]}`, `provider "openai" of credential ` + other + ` does not speak "anthropic-messages"`},
		{"MissingID", `{` + key + `,"credentials":[{"id":"` + primary + `"},{"weight":2}]}`, "credentials[1]: the credential id is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, v := call("POST", "/bindings", tc.body)
			msg, _ := v["error"].(map[string]any)["message"].(string)
			if code != 400 || !strings.Contains(msg, tc.msg) {
				t.Fatalf("got %d %q, want 400 saying %q", code, msg, tc.msg)
			}
		})
	}
	code, v = call("POST", "/bindings", `{`+key+`,"credentials":[{"id":"`+primary+`"},{"id":"cred_nope"}]}`)
	if code != 404 {
		t.Errorf("unknown alternate: %d %v", code, v)
	}

	all := strings.Join(bodies, "\n")
	if !strings.Contains(all, compat) {
		t.Fatal("no answer was recorded")
	}
	if strings.Contains(all, "CANARY") {
		t.Fatalf("a secret leaked into an admin answer: %s", all)
	}
}
