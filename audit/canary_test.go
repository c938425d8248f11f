package audit

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

// canaryForms are the spellings of a secret an entry must never hold.
func canaryForms(s string) []string {
	h := hex.EncodeToString([]byte(s))
	return []string{s, url.QueryEscape(s), h, strings.ToUpper(h),
		base64.StdEncoding.EncodeToString([]byte(s)), base64.RawURLEncoding.EncodeToString([]byte(s))}
}

// TestCanaryNeverReachesAnEntry: a secret handed to Record, in any field
// and any common encoding, under a secret's field name or an innocent
// one, nested or not, is stored as [redacted]; so is a value shaped like a
// key that nobody named. Harmless fields survive.
func TestCanaryNeverReachesAnEntry(t *testing.T) {
	forEachEngine(t, func(t *testing.T, l *Log) {
		const canary = "CANARY-9d41e7b2c6a85f03"
		const shaped = "sk-ant-api03-SHAPEDxxxxxxxxxxxxxxxxxxxx"
		ctx := WithActor(context.Background(), Actor{Kind: KindAPI, ID: "actor-" + canary}, "127.0.0.1")
		var change = map[string]any{
			"provider": "anthropic",
			"key":      "anything at all",
			"api_key":  "also anything",
			"nested":   map[string]any{"list": []any{"ok", "x"}, "strings": []string{"fine"}},
			"struct":   struct{ Note string }{Note: "kept"},
			"shaped":   shaped,
			"token":    "tgw_" + strings.Repeat("a", 43),
		}
		for i, f := range canaryForms(canary) {
			change[fmt.Sprintf("name%d", i)] = "team " + f
			change["nested"].(map[string]any)["list"] = append(change["nested"].(map[string]any)["list"].([]any), f)
		}
		if err := l.Record(ctx, "credential.create", "cred_"+base64.StdEncoding.EncodeToString([]byte(canary)), change, canary); err != nil {
			t.Fatal(err)
		}
		p, err := l.Query(context.Background(), Filter{})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(p)
		out := string(b) + fmt.Sprintf("%+v", p)
		for _, f := range append(canaryForms(canary), canaryForms(shaped)...) {
			if strings.Contains(out, f) {
				t.Errorf("%q reached the log: %s", f, out)
			}
		}
		for _, s := range []string{"anything at all", "also anything", "tgw_aaaa"} {
			if strings.Contains(out, s) {
				t.Errorf("a secret field's value %q reached the log", s)
			}
		}
		e := p.Entries[0]
		nested := e.Change["nested"].(map[string]any)
		if e.Change["provider"] != "anthropic" || nested["list"].([]any)[0] != "ok" || nested["strings"].([]any)[0] != "fine" ||
			e.Change["struct"].(map[string]any)["Note"] != "kept" || e.Change["key"] != Redacted || e.Target != Redacted || e.Actor.ID != Redacted {
			t.Errorf("entry: %+v", e)
		}
	})
}
