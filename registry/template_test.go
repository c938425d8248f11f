package registry

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

var tmplData = map[string]string{
	"BaseURL": "http://127.0.0.1:8787/openai/v1",
	"Token":   "tg_abc",
	"KeyEnv":  "TOLLGATE_TOKEN",
	"Model":   "gpt-5",
	"Dialect": "openai-responses",
}

func TestTemplateRenders(t *testing.T) {
	noModel := map[string]string{"BaseURL": "u", "Dialect": "openai-chat"}
	cases := []struct {
		src  string
		data map[string]string
		want string
	}{
		{"plain text, no actions", tmplData, "plain text, no actions"},
		{"", tmplData, ""},
		{`base_url = "{{.BaseURL}}"`, tmplData, `base_url = "http://127.0.0.1:8787/openai/v1"`},
		{"{{.KeyEnv}}{{.Token}}", tmplData, "TOLLGATE_TOKENtg_abc"},
		{"{{if .Model}}model = \"{{.Model}}\"\n{{end}}x", tmplData, "model = \"gpt-5\"\nx"},
		{"{{if .Model}}model = \"{{.Model}}\"\n{{end}}x", noModel, "x"},
		{"{{if not .Model}}none{{else}}{{.Model}}{{end}}", noModel, "none"},
		{`{{if eq .Dialect "anthropic-messages"}}a{{else if eq .Dialect "openai-responses"}}r{{else}}c{{end}}`, tmplData, "r"},
		{`{{if eq .Dialect "anthropic-messages"}}a{{else if eq .Dialect "openai-responses"}}r{{else}}c{{end}}`, noModel, "c"},
		{`{{if eq .Dialect "x" "openai-responses"}}any{{end}}`, tmplData, "any"},
		{`{{if ne .Dialect "openai-responses"}}other{{else}}same{{end}}`, tmplData, "same"},
		{"{{if eq .Model `gpt-5`}}raw{{end}}", tmplData, "raw"},
		{`{{if eq .Model "gpt\u002d5"}}escaped{{end}}`, tmplData, "escaped"},
		{"a  {{- .Model -}}  \n b", tmplData, "agpt-5b"},
		{"a {{- /* note */ -}} b", tmplData, "ab"},
		{"a{{/* multi\nline */}}b", tmplData, "ab"},
		{"{{if .Model}}{{if eq .Dialect \"openai-chat\"}}chat{{else}}{{.Dialect}}{{end}}{{end}}", tmplData, "openai-responses"},
		{"{{\n.Model\n}}", tmplData, "gpt-5"},
		{`{{if eq .Model "}}"}}braces{{else}}no{{end}}`, tmplData, "no"},
		{"100%{{.Model}}", tmplData, "100%gpt-5"},
		{"{{/*/ note */}}x", tmplData, "x"},
		{"{{/*/v1 is added below */}}{{.BaseURL}}", tmplData, "http://127.0.0.1:8787/openai/v1"},
		{"{{if eq .Model \"gpt-5\"}}{{.Model}}{{end}}", tmplData, "gpt-5"},
		// What text/template has beyond what harnesses.yaml used to be
		// held to works too.
		{`{{printf "%s-%s" .KeyEnv .Model}}`, tmplData, "TOLLGATE_TOKEN-gpt-5"},
		{"{{.Model | html}}", map[string]string{"Model": "a<b"}, "a&lt;b"},
		{"{{with .Model}}m={{.}}{{end}}", tmplData, "m=gpt-5"},
		{"{{if and .Model (ne .Dialect `x`)}}both{{end}}", tmplData, "both"},
	}
	for _, c := range cases {
		got, err := render(c.src, c.data)
		if err != nil || got != c.want {
			t.Errorf("%q: got %q, %v; want %q", c.src, got, err, c.want)
		}
	}
}

// A template that cannot render is refused when it is parsed, which is
// when the registry loads, and the error says where.
func TestTemplateRefusesBadTemplates(t *testing.T) {
	cases := []struct{ src, want string }{
		{"{{.Foo}}", "line 1: unknown field .Foo; fields are .BaseURL, .Token, .KeyEnv, .Model, .Dialect"},
		{"x\n{{if .Model}}\n{{.Tokn}}{{end}}", "line 3: unknown field .Tokn"},
		{"{{if .Model}}{{else}}{{.Foo}}{{end}}", "unknown field .Foo"},
		{"{{range .Model}}{{.Foo}}{{end}}", "unknown field .Foo"},
		{"{{with $x := .Model}}{{printf \"%s\" .Foo}}{{end}}", "unknown field .Foo"},
		{"{{.Model.Name}}", "unknown field .Model.Name"},
		{"{{(.Model).Name}}", "every field is a string"},
		{`{{template "x"}}`, "cannot call another"},
		{"{{if .Model}}x", "line 1: unexpected EOF"},
		{"x{{end}}", "line 1: unexpected {{end}}"},
		{"x\ny{{else}}", "line 2: unexpected {{else}}"},
		{"{{if}}x{{end}}", "missing value for if"},
		{"{{nosuchfunc .Model}}", `function "nosuchfunc" not defined`},
		{"{{.Model", "unclosed action"},
		{"{{/* open", "unclosed comment"},
		{`{{if eq .Model "a}}x{{end}}`, "unterminated quoted string"},
	}
	for _, c := range cases {
		_, err := parseTemplate(c.src)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "template: ") {
			t.Errorf("%q: got %v, want an error containing %q", c.src, err, c.want)
		}
	}
}

// shippedTemplates are the templates harnesses.yaml carries.
func shippedTemplates(t testing.TB) []string {
	raw, err := os.ReadFile("../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Harnesses map[string]struct {
			Env    []struct{ Value string }
			Config *struct{ Template string }
		}
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, h := range f.Harnesses {
		for _, e := range h.Env {
			out = append(out, e.Value)
		}
		if h.Config != nil {
			out = append(out, h.Config.Template)
		}
	}
	if len(out) < 3 {
		t.Fatalf("found only %d templates in harnesses.yaml", len(out))
	}
	return out
}

// Every template the shipped registry carries parses and renders, with
// and without a model.
func TestShippedTemplatesRender(t *testing.T) {
	for _, src := range shippedTemplates(t) {
		for _, model := range []string{"gpt-5", ""} {
			data := map[string]string{"BaseURL": "http://h/x", "Token": "tg_1", "KeyEnv": "K", "Model": model, "Dialect": "openai-chat"}
			if _, err := render(src, data); err != nil {
				t.Errorf("%q: %v", src, err)
			}
		}
	}
}

// A bad template fails the registry load, and the problem names the
// harness and the entry it is in.
func TestBadTemplateFailsTheLoadNamingTheHarness(t *testing.T) {
	src := minimal + "    env:\n      - {name: CODEX_MODEL, value: \"{{.Modle}}\"}\n    config:\n      file: c.toml\n      template: \"x\\n{{if .Model}}y\"\n"
	_, err := Parse([]byte(src))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a ValidationError", err)
	}
	want := []string{
		"harnesses.codex.env[0]: value is not a valid template: line 1: unknown field .Modle; fields are .BaseURL, .Token, .KeyEnv, .Model, .Dialect",
		"harnesses.codex.config.template: line 2: unexpected EOF",
	}
	if !slices.Equal(ve.Problems, want) {
		t.Errorf("problems:\n got %q\nwant %q", ve.Problems, want)
	}
}
