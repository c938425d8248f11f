package registry

import (
	"bufio"
	"fmt"
	"strings"
)

// Setup is what a workspace needs to point a harness at tollgate: variables
// to export and, for harnesses that read one, a config-file snippet.
type Setup struct {
	Harness string   `json:"harness"`
	Dialect string   `json:"dialect"`
	BaseURL string   `json:"base_url"`
	Env     []EnvVar `json:"env"`
	// ConfigFile and Config are empty when the harness needs no file.
	ConfigFile string `json:"config_file,omitempty"`
	Config     string `json:"config,omitempty"`
}

// EnvOptions are the inputs of Setup.
type EnvOptions struct {
	// ProxyURL is tollgate's public URL, without a trailing slash.
	ProxyURL string
	// Token is the workspace-scoped token.
	Token string
	// Model optionally pins the model.
	Model string
	// Dialect picks one of the harness's dialects; default its first.
	Dialect string
}

// Setup renders the environment and config for harness name, from the
// registry alone.
func (r *Registry) Setup(name string, o EnvOptions) (*Setup, error) {
	h, err := r.Harness(name)
	if err != nil {
		return nil, fmt.Errorf("%w %q", err, name)
	}
	dn := o.Dialect
	if dn == "" {
		dn = h.Dialects[0]
	}
	if !h.SpeaksDialect(dn) {
		return nil, fmt.Errorf("harness %q does not speak dialect %q", name, dn)
	}
	d, err := r.Dialect(dn)
	if err != nil {
		return nil, err
	}
	if h.RequiresModel && o.Model == "" {
		return nil, fmt.Errorf("harness %q needs a model: its config must name one (tollgate env --model M)", name)
	}
	s := &Setup{
		Harness: name,
		Dialect: dn,
		BaseURL: strings.TrimRight(o.ProxyURL, "/") + "/" + d.Route + h.BaseURLSuffix,
	}
	data := map[string]string{"BaseURL": s.BaseURL, "Token": o.Token, "KeyEnv": h.KeyEnv, "Model": o.Model, "Dialect": dn}
	if h.BaseURLEnv != "" {
		s.Env = append(s.Env, EnvVar{Name: h.BaseURLEnv, Value: s.BaseURL})
	}
	s.Env = append(s.Env, EnvVar{Name: h.KeyEnv, Value: o.Token})
	if h.ModelEnv != "" && o.Model != "" {
		s.Env = append(s.Env, EnvVar{Name: h.ModelEnv, Value: o.Model})
	}
	for _, e := range h.Env {
		v, err := render(e.Value, data)
		if err != nil {
			return nil, fmt.Errorf("harness %q env %s: %w", name, e.Name, err)
		}
		s.Env = append(s.Env, EnvVar{Name: e.Name, Value: v})
	}
	if h.Config != nil {
		txt, err := render(h.Config.Template, data)
		if err != nil {
			return nil, fmt.Errorf("harness %q config: %w", name, err)
		}
		s.ConfigFile, s.Config = h.Config.File, txt
	}
	return s, nil
}

// Shell is s as "tollgate env" prints it: shell exports, then the config
// snippet as a comment block the reader copies into the named file.
func (s *Setup) Shell() string {
	var b strings.Builder
	for _, e := range s.Env {
		fmt.Fprintf(&b, "export %s=%s\n", e.Name, ShellQuote(e.Value))
	}
	if s.Config != "" {
		fmt.Fprintf(&b, "# %s:\n", s.ConfigFile)
		sc := bufio.NewScanner(strings.NewReader(s.Config))
		for sc.Scan() {
			fmt.Fprintf(&b, "#   %s\n", sc.Text())
		}
	}
	return b.String()
}

// TokenSetups is the environment a newly issued token comes with: its
// harness's, or, for a token tied to none, every harness's that can be
// rendered (one that must name a model is left out until a model is
// given).
func (r *Registry) TokenSetups(harness string, o EnvOptions) ([]*Setup, error) {
	var out []*Setup
	for _, h := range r.Harnesses() {
		if harness != "" && h.Name != harness {
			continue
		}
		if harness == "" && h.RequiresModel && o.Model == "" {
			continue
		}
		st, err := r.Setup(h.Name, o)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// ShellQuote quotes v for a POSIX shell export line.
func ShellQuote(v string) string {
	if v == "" {
		return "''"
	}
	safe := true
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./:=@,+", c)) {
			safe = false
			break
		}
	}
	if safe {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}
