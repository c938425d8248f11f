package registry

import (
	"os"
	"strings"
	"testing"
	"text/template"

	"gopkg.in/yaml.v3"
)

var tmplData = map[string]string{
	"BaseURL": "http://127.0.0.1:8787/openai/v1",
	"Token":   "tg_abc",
	"KeyEnv":  "TOLLGATE_TOKEN",
	"Model":   "gpt-5",
	"Dialect": "openai-responses",
}

// goTemplate renders src with text/template, the language ours is a part
// of: whatever ours accepts must render the same there.
func goTemplate(src string, data map[string]string) (string, error) {
	t, err := template.New("").Option("missingkey=error").Parse(src)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	err = t.Execute(&b, struct{ BaseURL, Token, KeyEnv, Model, Dialect string }{
		data["BaseURL"], data["Token"], data["KeyEnv"], data["Model"], data["Dialect"]})
	return b.String(), err
}

func TestTemplateRendersLikeTextTemplate(t *testing.T) {
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
	}
	for _, c := range cases {
		tp, err := parseTemplate(c.src)
		if err != nil {
			t.Errorf("parse %q: %v", c.src, err)
			continue
		}
		got := tp.execute(c.data)
		if got != c.want {
			t.Errorf("%q: got %q, want %q", c.src, got, c.want)
		}
		if ref, err := goTemplate(c.src, c.data); err != nil || ref != got {
			t.Errorf("%q: text/template gives %q, %v; ours %q", c.src, ref, err, got)
		}
	}
}

func TestTemplateRefusesWhatItDoesNotSupport(t *testing.T) {
	cases := []struct{ src, want string }{
		{"{{.Foo}}", "unknown field .Foo; fields are .BaseURL, .Token, .KeyEnv, .Model, .Dialect"},
		{"{{.Model.Name}}", "unknown field .Model.Name"},
		{"x\ny\n{{range .Model}}{{end}}", "line 3: unexpected range"},
		{`{{printf "%s" .Model}}`, "unexpected printf"},
		{"{{.Model | html}}", "unexpected | after .Model"},
		{"{{if}}x{{end}}", "{{if}} needs a condition"},
		{"{{if .Model}}x", "{{if}} without {{end}}"},
		{"{{if .Model}}x{{else}}y", "{{if}} without {{end}}"},
		{"x{{end}}", "{{end}} without {{if}}"},
		{"x{{else}}", "{{else}} without {{if}}"},
		{"{{if .Model}}a{{else}}b{{else}}c{{end}}", "only {{end}} may follow it"},
		{"{{if .Model}}a{{else with .Model}}b{{end}}", "unexpected with after else"},
		{"{{if .Model}}a{{end .Model}}", "unexpected .Model after end"},
		{`{{if eq .Model}}x{{end}}`, "eq needs a .Field and at least one quoted string"},
		{`{{if ne .Model "a" "b"}}x{{end}}`, "ne needs a .Field and exactly one quoted string"},
		{`{{if eq .Model .Dialect}}x{{end}}`, "unexpected .Dialect in condition"},
		{`{{if .Model "a"}}x{{end}}`, `unexpected "a" in condition`},
		{`{{if not}}x{{end}}`, "not needs a .Field"},
		{`{{if eq "a" .Model}}x{{end}}`, `unexpected "a"`},
		{`{{if eq .Model "a}}x{{end}}`, "unterminated quoted string"},
		{"{{.Model", "unclosed action"},
		{"{{/* open", "unclosed comment"},
		{"{{/* c */ }}", "comment ends before closing delimiter"},
		{"{{ }}", "empty action"},
		{"{{if .Model}}\nline2\n{{.Token}}\nline4\n", "line 1: {{if}} without {{end}}"},
		// Words run together are errors in text/template too.
		{`{{if eq .Model"m"}}yes{{end}}`, "unknown field .Model\"m\""},
		{"{{if eq .Model`m`}}a{{end}}", "unknown field .Model`m`"},
		{`{{if eq .Model "x""m"}}yes{{end}}`, `unexpected '"' right after "x"`},
		{"{{if eq .Model `x``m`}}yes{{end}}", "unexpected '`' right after `x`"},
		{`{{if .Token}}a{{else if eq .Model "b""c"}}b{{end}}`, "right after"},
		{"{{/*/}}", "unclosed comment"},
		{"{{- /*/}}", "unclosed comment"},
		{"{{if eq .Model \"a\\\nb\"}}x{{end}}", "unterminated quoted string"},
		{"{{if eq .Model `a}}x{{end}}", "unterminated raw quoted string"},
	}
	for _, c := range cases {
		_, err := parseTemplate(c.src)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want an error containing %q", c.src, err, c.want)
		}
	}
}

// The templates the shipped registry carries are the seeds of the fuzz
// test, so it starts from what admins actually write.
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

// FuzzTemplateMatchesTextTemplate: any template ours accepts, text/template
// accepts too and renders the same, for any field values.
func FuzzTemplateMatchesTextTemplate(f *testing.F) {
	for _, s := range shippedTemplates(f) {
		f.Add(s, "gpt-5", "openai-chat")
		f.Add(s, "", "anthropic-messages")
	}
	f.Add("{{- if ne .Model `x` -}} {{.Model}} {{- else -}} y {{- end -}}", "x", "")
	f.Add("{{if eq .Dialect \"a\" \"b\"}}{{/* c */}}{{end}}", "", "b")
	f.Add("{{if eq .Model\"m\"}}yes{{end}}", "m", "")
	f.Add("{{if eq .Model `x``m`}}yes{{end}}{{/*/}}", "m", "")
	f.Fuzz(func(t *testing.T, src, model, dialect string) {
		tp, err := parseTemplate(src)
		if err != nil {
			return
		}
		data := map[string]string{"BaseURL": "http://h/x", "Token": "tg_1", "KeyEnv": "K", "Model": model, "Dialect": dialect}
		got := tp.execute(data)
		ref, err := goTemplate(src, data)
		if err != nil {
			t.Fatalf("%q: ours renders %q, text/template fails: %v", src, got, err)
		}
		if ref != got {
			t.Fatalf("%q: ours %q, text/template %q", src, got, ref)
		}
	})
}
