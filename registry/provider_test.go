package registry

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// withProvider adds a provider entry (its lines indented under providers:)
// to the minimal registry.
func withProvider(entry string) string {
	return strings.Replace(minimal, "harnesses:", entry+"harnesses:", 1)
}

// TestProviderModelMapAndUsageOverrideLoad: a provider that sets both keys
// loads with them as written, and the effective rules and model names are
// what they say.
func TestProviderModelMapAndUsageOverrideLoad(t *testing.T) {
	r, err := Parse([]byte(withProvider(`  compat:
    base_url: https://llm.example.test/v1/
    dialects: [openai-chat]
    auth: bearer
    model_map:
      gpt-5: vendor/gpt-5
      "gpt-5*": vendor/gpt-5-family
      "claude-*": "anthropic/claude-*"
      "claude-sonnet-*": "anthropic/sonnet-*"
      "*": "other/*"
    usage:
      input_includes_cache: false
      output_includes_reasoning: false
`)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Provider("compat")
	if err != nil {
		t.Fatal(err)
	}
	wantMap := map[string]string{"gpt-5": "vendor/gpt-5", "gpt-5*": "vendor/gpt-5-family",
		"claude-*": "anthropic/claude-*", "claude-sonnet-*": "anthropic/sonnet-*", "*": "other/*"}
	if !reflect.DeepEqual(p.ModelMap, wantMap) {
		t.Errorf("model_map = %v, want %v", p.ModelMap, wantMap)
	}
	if p.Usage == nil || p.Usage.InputIncludesCache == nil || *p.Usage.InputIncludesCache {
		t.Fatalf("usage override = %+v, want input_includes_cache false", p.Usage)
	}
	for _, tc := range []struct{ in, want string }{
		{"gpt-5", "vendor/gpt-5"},             // exact beats the glob that also matches
		{"gpt-5-mini", "vendor/gpt-5-family"}, // glob without a star in the value: many to one
		{"claude-opus-5", "anthropic/claude-opus-5"},
		{"claude-sonnet-5", "anthropic/sonnet-5"}, // the longest prefix wins
		{"claude-", "anthropic/claude-"},
		{"gemini-3", "other/gemini-3"},
		{"", "other/"},
	} {
		if got := p.MapModel(tc.in); got != tc.want {
			t.Errorf("MapModel(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	d, _ := r.Dialect("openai-chat")
	d.Usage.InputIncludesCache = true // the minimal dialect leaves it unset
	if got := p.UsageRules(d); got.InputIncludesCache {
		t.Errorf("UsageRules kept the dialect's input_includes_cache true over the provider's false")
	}
	d.Usage.OutputIncludesReasoning = true
	if got := p.UsageRules(d); got.OutputIncludesReasoning {
		t.Errorf("UsageRules kept the dialect's output_includes_reasoning true over the provider's false")
	}
	if got := p.UsageRules(d); got.Fields != d.Usage.Fields || got.Body != d.Usage.Body {
		t.Errorf("UsageRules changed what the override does not name: %+v", got)
	}
	p.Usage.OutputIncludesReasoning = nil
	if got := p.UsageRules(d); !got.OutputIncludesReasoning || got.InputIncludesCache {
		t.Errorf("an override of input_includes_cache alone changed output_includes_reasoning, or lost its own: %+v", got)
	}
	other, _ := r.Provider("openai")
	if got := other.UsageRules(d); !got.InputIncludesCache {
		t.Errorf("a provider without an override did not keep the dialect's rules")
	}
	if got := (*Provider)(nil).UsageRules(d); !got.InputIncludesCache {
		t.Errorf("a nil provider did not keep the dialect's rules")
	}
	if got := other.MapModel("gpt-5"); got != "gpt-5" {
		t.Errorf("a provider without a model_map renamed gpt-5 to %q", got)
	}

	// Written back out, the entry loads to the same values.
	out, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var entry strings.Builder
	entry.WriteString("  again:\n")
	for _, line := range strings.SplitAfter(strings.TrimRight(string(out), "\n")+"\n", "\n") {
		if line != "" {
			entry.WriteString("    " + line)
		}
	}
	r2, err := Parse([]byte(withProvider(entry.String())))
	if err != nil {
		t.Fatalf("the marshalled entry does not load: %v\n%s", err, entry.String())
	}
	again, _ := r2.Provider("again")
	if !reflect.DeepEqual(again.ModelMap, p.ModelMap) || !reflect.DeepEqual(again.Usage, p.Usage) {
		t.Errorf("round trip changed the entry: %v %+v, want %v %+v", again.ModelMap, again.Usage, p.ModelMap, p.Usage)
	}
}

// TestProviderModelMapAndUsageOverrideProblems: each bad entry is refused
// with its own problem, naming the provider, key and line where yaml.v3
// knows it.
func TestProviderModelMapAndUsageOverrideProblems(t *testing.T) {
	long := strings.Repeat("m", maxModelNameBytes+1)
	for _, tc := range []struct {
		name  string
		entry string
		want  []string
	}{
		{"UnknownUsageKey", "    usage: {input_include_cache: true}\n",
			[]string{`providers.compat.usage: line 20: unknown key "input_include_cache"; did you mean "input_includes_cache"?`}},
		// Only the semantics a provider may change are keys; the dialect's
		// field paths are not.
		{"UsageFieldsAreTheDialects", "    usage:\n      fields: {input: prompt_tokens}\n",
			[]string{`providers.compat.usage: line 21: unknown key "fields"; known keys: input_includes_cache, output_includes_reasoning`}},
		{"UsageNotABool", "    usage: {input_includes_cache: maybe}\n",
			[]string{`providers.compat.usage.input_includes_cache: line 20: expected true or false, got text "maybe"`}},
		{"UsageNotAMapping", "    usage: true\n",
			[]string{`providers.compat.usage: line 20: expected a mapping, got true or false "true"`}},
		{"ModelMapNotAMapping", "    model_map: [gpt-5]\n",
			[]string{`providers.compat.model_map: line 20: expected a mapping, got a list`}},
		{"ModelMapNestedValue", "    model_map: {gpt-5: {to: x}}\n",
			[]string{`providers.compat.model_map.gpt-5: line 20: expected text, got a mapping`}},
		{"ModelMapNames", `    model_map:
      "": x
      empty: ""
      nothing:
      "gpt 5": x
      tab: "a` + "\t" + `b"
      newline: "a\nb"
      "*x*": y
      "a*b": y
      star-value: "x*"
      ` + long + `: x
      toolong: ` + long + `
`, []string{
			`providers.compat.model_map: key "" is empty`,
			`providers.compat.model_map: key "*x*" has a * before its end; only a final * matches`,
			`providers.compat.model_map: key "a*b" has a * before its end; only a final * matches`,
			`providers.compat.model_map.empty: "" is empty`,
			`providers.compat.model_map: key "gpt 5" contains a space or control character`,
			`providers.compat.model_map: key "` + long[:40] + `"... (257 bytes) is longer than 256 bytes`,
			`providers.compat.model_map.newline: "a\nb" contains a space or control character`,
			`providers.compat.model_map.nothing: "" is empty`,
			`providers.compat.model_map.star-value: "x*" ends in * but its key does not, so there is nothing for the * to stand for`,
			`providers.compat.model_map.tab: "a\tb" contains a space or control character`,
			`providers.compat.model_map.toolong: "` + long[:40] + `"... (257 bytes) is longer than 256 bytes`,
		}},
		{"ModelMapKeyTwice", "    model_map:\n      gpt-5: a\n      gpt-5: b\n",
			[]string{`providers.compat: line 22: mapping key "gpt-5" already defined at line 21`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := withProvider("  compat:\n    base_url: https://llm.example.test\n    dialects: [openai-chat]\n    auth: bearer\n" + tc.entry)
			_, err := Parse([]byte(src))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %v, want a ValidationError", err)
			}
			if !reflect.DeepEqual(ve.Problems, tc.want) {
				t.Errorf("problems:\n got %q\nwant %q", ve.Problems, tc.want)
			}
		})
	}
}

// geminiDialect is a dialect that names the model in the URL path.
const geminiDialect = `  gemini:
    route: gemini
    error_shape: gemini
    paths:
      - {path: "/v1beta/models/{model}:generateContent", methods: [POST], metered: true, stream: never}
    usage:
      fields: {input: promptTokenCount, output: candidatesTokenCount}
      body: {usage: usageMetadata}
providers:`

// TestModelMapForAPathModelDialectIsOneSegment: where the model travels in
// the URL, a mapped name with "/" is refused (it would be escaped into one
// segment no provider serves); in a body it is fine.
func TestModelMapForAPathModelDialectIsOneSegment(t *testing.T) {
	src := strings.Replace(minimal, "providers:", geminiDialect, 1)
	src = strings.Replace(src, "harnesses:", `  vertexish:
    base_url: https://llm.example.test
    dialects: [openai-chat, gemini]
    auth: x-goog-api-key
    model_map: {gemini-3-pro: google/gemini-3-pro, "gemini-*": "gemini-exp-*"}
harnesses:`, 1)
	_, err := Parse([]byte(src))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a ValidationError", err)
	}
	want := []string{`providers.vertexish.model_map.gemini-3-pro: "google/gemini-3-pro" contains /, but dialect gemini puts the model in the URL path as one segment`}
	if !reflect.DeepEqual(ve.Problems, want) {
		t.Errorf("problems:\n got %q\nwant %q", ve.Problems, want)
	}
	if _, err := Parse([]byte(strings.Replace(src, "dialects: [openai-chat, gemini]\n    auth: x-goog", "dialects: [openai-chat]\n    auth: x-goog", 1))); err != nil {
		t.Errorf("a / in a name sent in the body was refused: %v", err)
	}
}

// TestShippedProviderExampleLoads: the commented provider example in
// harnesses.yaml, uncommented, is a valid entry and does what its comment
// says, so the documentation cannot drift from the loader.
func TestShippedProviderExampleLoads(t *testing.T) {
	b, err := os.ReadFile("../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const head = "  # anthropic-compatible:"
	src := string(b)
	i := strings.Index(src, head)
	if i < 0 {
		t.Fatalf("harnesses.yaml has no %q example", head)
	}
	var entry strings.Builder
	for _, line := range strings.SplitAfter(src[i:], "\n") {
		if !strings.HasPrefix(line, "  # ") {
			break
		}
		entry.WriteString("  " + strings.TrimPrefix(line, "  # "))
	}
	src = strings.Replace(src, "\nharnesses:", "\n"+entry.String()+"harnesses:", 1)
	r, err := Parse([]byte(src))
	if err != nil {
		t.Fatalf("the uncommented example does not load: %v\n%s", err, entry.String())
	}
	p, err := r.Provider("anthropic-compatible")
	if err != nil {
		t.Fatal(err)
	}
	d, _ := r.Dialect("anthropic-messages")
	if d.Usage.InputIncludesCache || !p.UsageRules(d).InputIncludesCache {
		t.Errorf("the example does not turn the dialect's input_includes_cache false into true")
	}
	if got := p.MapModel("claude-sonnet-4-5"); got == "claude-sonnet-4-5" {
		t.Errorf("the example's model_map leaves claude-sonnet-4-5 as it is")
	}
}
