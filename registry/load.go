package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Defaults for Limits, each with its reason.
const (
	// DefaultMaxBodyBytes: agent contexts run to megabytes with images.
	DefaultMaxBodyBytes = 32 << 20
	// DefaultMaxErrorBodyBytes: provider error bodies are small; a bound
	// keeps a misbehaving upstream from filling memory.
	DefaultMaxErrorBodyBytes = 1 << 20
	// DefaultMaxResponseBodyBytes: non-streamed answers with images.
	DefaultMaxResponseBodyBytes = 64 << 20
	// DefaultMaxEventBytes follows Bifrost's 10 MiB SSE event bound.
	DefaultMaxEventBytes = 10 << 20
)

// file is the YAML document, decoded section by section so that every
// problem names its section and item.
type file struct {
	Version   int
	Limits    Limits
	Dialects  orderedMap[Dialect]
	Providers orderedMap[Provider]
	Harnesses orderedMap[Harness]
}

type rawFile struct {
	Version   int       `yaml:"version"`
	Limits    Limits    `yaml:"limits"`
	Dialects  yaml.Node `yaml:"dialects"`
	Providers yaml.Node `yaml:"providers"`
	Harnesses yaml.Node `yaml:"harnesses"`
}

// orderedMap keeps a YAML mapping's order, for listings in file order.
type orderedMap[T any] struct {
	keys []string
	vals map[string]*T
}

// decodeSection decodes the mapping n of section into m, returning one
// problem per unknown key and bad value.
func decodeSection[T any](section string, n *yaml.Node, m *orderedMap[T]) []string {
	m.vals = make(map[string]*T)
	if n.Kind == 0 {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return []string{fmt.Sprintf("%s: line %d: expected a mapping of names to entries", section, n.Line)}
	}
	var probs []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i].Value
		at := section + "." + k
		if _, dup := m.vals[k]; dup {
			probs = append(probs, fmt.Sprintf("%s: line %d: defined twice", at, n.Content[i].Line))
			continue
		}
		probs = append(probs, unknownKeys(reflect.TypeFor[T](), n.Content[i+1], at)...)
		v := new(T)
		probs = append(probs, decodeProblems(n.Content[i+1].Decode(v), n.Content[i+1], at)...)
		m.keys = append(m.keys, k)
		m.vals[k] = v
	}
	return probs
}

// decodeProblems lists the problems in a yaml.v3 decoding error of the
// value n, named at. Unknown keys are found by unknownKeys, so decoding
// itself is not strict.
func decodeProblems(err error, n *yaml.Node, at string) []string {
	if err == nil {
		return nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return []string{err.Error()}
	}
	out := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		out[i] = typeProblem(m, n, at)
	}
	return out
}

// ValidationError lists every problem found in a registry file, each naming
// the item it concerns.
type ValidationError struct {
	Problems []string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("%d problem(s) in registry:\n  %s", len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// LoadFile reads and validates the registry at path.
func LoadFile(path string) (*Registry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	return Parse(b)
}

// Load reads and validates a registry from r.
func Load(r io.Reader) (*Registry, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	return Parse(b)
}

// Parse validates src and builds a Registry. On failure the error is a
// *ValidationError listing every problem.
func Parse(src []byte) (*Registry, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, &ValidationError{Problems: []string{syntaxProblem(err, src)}}
	}
	var raw rawFile
	var probs []string
	if len(doc.Content) > 0 {
		probs = unknownKeys(reflect.TypeFor[rawFile](), doc.Content[0], "")
		probs = append(probs, decodeProblems(doc.Decode(&raw), doc.Content[0], "")...)
	}
	f := file{Version: raw.Version, Limits: raw.Limits}
	probs = append(probs, decodeSection("dialects", &raw.Dialects, &f.Dialects)...)
	probs = append(probs, decodeSection("providers", &raw.Providers, &f.Providers)...)
	probs = append(probs, decodeSection("harnesses", &raw.Harnesses, &f.Harnesses)...)
	if len(probs) > 0 {
		return nil, &ValidationError{Problems: probs}
	}
	applyDefaults(&f)
	if probs := validate(&f); len(probs) > 0 {
		return nil, &ValidationError{Problems: probs}
	}
	sum := sha256.Sum256(src)
	r := &Registry{
		Version:      hex.EncodeToString(sum[:6]),
		Limits:       f.Limits,
		dialects:     f.Dialects.vals,
		providers:    f.Providers.vals,
		harnesses:    f.Harnesses.vals,
		byRoute:      make(map[string][]*Dialect),
		harnessOrder: f.Harnesses.keys,
		dialectOrder: f.Dialects.keys,
	}
	for _, name := range f.Dialects.keys {
		d := f.Dialects.vals[name]
		r.byRoute[d.Route] = append(r.byRoute[d.Route], d)
	}
	return r, nil
}

func applyDefaults(f *file) {
	if f.Limits.MaxBodyBytes == 0 {
		f.Limits.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if f.Limits.MaxErrorBodyBytes == 0 {
		f.Limits.MaxErrorBodyBytes = DefaultMaxErrorBodyBytes
	}
	if f.Limits.MaxResponseBodyBytes == 0 {
		f.Limits.MaxResponseBodyBytes = DefaultMaxResponseBodyBytes
	}
	if f.Limits.MaxEventBytes == 0 {
		f.Limits.MaxEventBytes = DefaultMaxEventBytes
	}
	for _, name := range f.Dialects.keys {
		d := f.Dialects.vals[name]
		d.Name = name
		d.Route = strings.Trim(d.Route, "/")
		if d.Operation == "" {
			d.Operation = "chat"
		}
		if d.StreamError == "" {
			d.StreamError = StreamErrorChunk
			if d.ErrorShape == ShapeAnthropic {
				d.StreamError = StreamErrorEvent
			}
		}
		for i := range d.Paths {
			p := &d.Paths[i]
			if p.Stream == "" {
				p.Stream = StreamBody
			}
			for j, m := range p.Methods {
				p.Methods[j] = strings.ToUpper(m)
			}
			p.segments = parsePattern(p.Pattern)
		}
		for i := range d.Usage.Stream.Events {
			if d.Usage.Stream.Events[i].Merge == "" {
				d.Usage.Stream.Events[i].Merge = MergeReplace
			}
		}
	}
	for _, name := range f.Providers.keys {
		p := f.Providers.vals[name]
		p.Name = name
		p.BaseURL = strings.TrimRight(p.BaseURL, "/")
		if p.OTelName == "" {
			p.OTelName = name
		}
	}
	for _, name := range f.Harnesses.keys {
		f.Harnesses.vals[name].Name = name
	}
}

var (
	nameRE   = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
	envRE    = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)
	headerRE = regexp.MustCompile(`^[A-Za-z0-9-]+$`)
	// routeRE: a path segment that needs no escaping (RFC 3986 unreserved)
	// and is not "." or "..".
	routeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._~-]*$`)
)

// reservedRoutes are path segments tollgate serves itself.
var reservedRoutes = map[string]bool{"admin": true, "metrics": true, "healthz": true, "readyz": true}

func validate(f *file) []string {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }

	if f.Version != 1 {
		add("version: must be 1, got %d", f.Version)
	}
	if f.Limits.MaxBodyBytes < 0 || f.Limits.MaxErrorBodyBytes < 0 || f.Limits.MaxResponseBodyBytes < 0 || f.Limits.MaxEventBytes < 0 {
		add("limits: sizes must not be negative")
	}
	if len(f.Dialects.keys) == 0 {
		add("dialects: at least one dialect is required")
	}
	if len(f.Providers.keys) == 0 {
		add("providers: at least one provider is required")
	}

	routePaths := map[string]string{} // method, route and pattern → the path serving it
	var served []servedPath
	routeFold := map[string]*Dialect{} // lower-cased route → first dialect on it
	for _, name := range f.Dialects.keys {
		d := f.Dialects.vals[name]
		at := "dialects." + name
		if !nameRE.MatchString(name) {
			add("%s: name must be lowercase letters, digits and dashes", at)
		}
		switch {
		case d.Route == "":
			add("%s.route: is required", at)
		case strings.Contains(d.Route, "/"):
			add("%s.route: %q must be one path segment", at, d.Route)
		case !routeRE.MatchString(d.Route):
			add("%s.route: %q must be letters, digits, dots, dashes, underscores or tildes, starting with a letter or digit", at, d.Route)
		// fiber matches tollgate's own routes regardless of case.
		case reservedRoutes[strings.ToLower(d.Route)]:
			add("%s.route: %q is reserved for tollgate itself", at, d.Route)
		default:
			if other, ok := routeFold[strings.ToLower(d.Route)]; ok && other.Route != d.Route {
				add("%s.route: %q differs from the route %q of dialects.%s only in case; dialects %s and %s must share one spelling or use different routes",
					at, d.Route, other.Route, other.Name, other.Name, name)
			} else if !ok {
				routeFold[strings.ToLower(d.Route)] = d
			}
		}
		switch d.ErrorShape {
		case ShapeOpenAI, ShapeAnthropic, ShapeGemini:
		default:
			add("%s.error_shape: %q is not one of openai, anthropic, gemini", at, d.ErrorShape)
		}
		switch d.StreamError {
		case StreamErrorEvent, StreamErrorChunk, StreamErrorResponseFailed:
		default:
			add("%s.stream_error: %q is not one of event, chunk, response.failed", at, d.StreamError)
		}
		if len(d.Paths) == 0 {
			add("%s.paths: at least one path is required", at)
		}
		for i, pa := range d.Paths {
			pat := fmt.Sprintf("%s.paths[%d]", at, i)
			if !strings.HasPrefix(pa.Pattern, "/") {
				add("%s.path: %q must start with /", pat, pa.Pattern)
			}
			if strings.Contains(pa.Pattern, "..") || strings.Contains(pa.Pattern, "//") {
				add("%s.path: %q must not contain .. or //", pat, pa.Pattern)
			}
			if len(pa.Methods) == 0 {
				add("%s.methods: at least one method is required", pat)
			}
			for _, m := range pa.Methods {
				switch m {
				case "GET", "POST", "HEAD", "DELETE":
				default:
					add("%s.methods: %q is not GET, POST, HEAD or DELETE", pat, m)
				}
			}
			switch pa.Stream {
			case StreamBody, StreamAlways, StreamNever:
			default:
				add("%s.stream: %q is not body, always or never", pat, pa.Stream)
			}
			for _, m := range pa.Methods {
				key := m + " /" + d.Route + pa.Pattern
				if other, dup := routePaths[key]; dup {
					add("%s.path: %s is also served by %s", pat, key, other)
					continue
				}
				routePaths[key] = pat
				// Dialects may share a route segment (openai-chat and
				// openai-responses), but a request must still name one:
				// the first match would silently take it, with the wrong
				// error shape and usage rules.
				for _, o := range served {
					if o.dialect.Route == d.Route && o.dialect != d && o.method == m && patternsOverlap(o.path.segments, pa.segments) {
						add("%s.path: %s overlaps %s /%s%s of dialects.%s: dialects %s and %s share route %q and must not serve the same request",
							pat, key, m, d.Route, o.path.Pattern, o.dialect.Name, o.dialect.Name, name, d.Route)
						break
					}
				}
				served = append(served, servedPath{d, &d.Paths[i], m})
			}
		}
		p = append(p, validateUsage(at+".usage", &d.Usage)...)
	}

	for _, name := range f.Providers.keys {
		pr := f.Providers.vals[name]
		at := "providers." + name
		if !nameRE.MatchString(name) {
			add("%s: name must be lowercase letters, digits and dashes", at)
		}
		if u, err := url.Parse(pr.BaseURL); err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			add("%s.base_url: %q is not an absolute http(s) URL", at, pr.BaseURL)
		} else if u.RawQuery != "" || u.Fragment != "" {
			add("%s.base_url: %q must not carry a query or fragment", at, pr.BaseURL)
		}
		if len(pr.Dialects) == 0 {
			add("%s.dialects: at least one dialect is required", at)
		}
		for _, d := range pr.Dialects {
			if _, ok := f.Dialects.vals[d]; !ok {
				add("%s.dialects: unknown dialect %q", at, d)
			}
		}
		switch pr.Auth {
		case AuthXAPIKey, AuthBearer, AuthXGoogAPIKey:
		default:
			add("%s.auth: %q is not one of x-api-key, bearer, x-goog-api-key", at, pr.Auth)
		}
		for _, h := range sortedKeys(pr.Headers) {
			if !headerRE.MatchString(h) {
				add("%s.headers: %q is not a valid header name", at, h)
			}
			if isAuthHeader(h) {
				add("%s.headers: %q carries credentials and cannot be set here", at, h)
			}
		}
		for _, h := range pr.ForwardHeaders {
			if !headerRE.MatchString(h) {
				add("%s.forward_headers: %q is not a valid header name", at, h)
			}
			if isAuthHeader(h) {
				add("%s.forward_headers: %q carries credentials and is never forwarded", at, h)
			}
		}
		p = append(p, validateModelMap(at+".model_map", pr, f)...)
	}

	uas := map[string]string{}
	for _, name := range f.Harnesses.keys {
		h := f.Harnesses.vals[name]
		at := "harnesses." + name
		if !nameRE.MatchString(name) {
			add("%s: name must be lowercase letters, digits and dashes", at)
		}
		if len(h.Dialects) == 0 {
			add("%s.dialects: at least one dialect is required", at)
		}
		for _, d := range h.Dialects {
			if _, ok := f.Dialects.vals[d]; !ok {
				add("%s.dialects: unknown dialect %q", at, d)
			}
		}
		if pr, ok := f.Providers.vals[h.Provider]; !ok {
			add("%s.provider: unknown provider %q", at, h.Provider)
		} else if len(h.Dialects) > 0 && !pr.Speaks(h.Dialects[0]) {
			add("%s.provider: %q does not speak the harness's first dialect %q", at, h.Provider, h.Dialects[0])
		}
		if h.BaseURLEnv == "" && h.Config == nil {
			add("%s: needs base_url_env or a config snippet, or it cannot be pointed at tollgate", at)
		}
		if h.BaseURLEnv != "" && !envRE.MatchString(h.BaseURLEnv) {
			add("%s.base_url_env: %q is not an environment variable name", at, h.BaseURLEnv)
		}
		if !envRE.MatchString(h.KeyEnv) {
			add("%s.key_env: %q is not an environment variable name", at, h.KeyEnv)
		}
		if h.ModelEnv != "" && !envRE.MatchString(h.ModelEnv) {
			add("%s.model_env: %q is not an environment variable name", at, h.ModelEnv)
		}
		if h.BaseURLSuffix != "" && !strings.HasPrefix(h.BaseURLSuffix, "/") {
			add("%s.base_url_suffix: %q must start with /", at, h.BaseURLSuffix)
		}
		switch strings.ToLower(h.KeyHeader) {
		case "authorization", "x-api-key", "x-goog-api-key":
		default:
			add("%s.key_header: %q is not authorization, x-api-key or x-goog-api-key", at, h.KeyHeader)
		}
		for i, e := range h.Env {
			if !envRE.MatchString(e.Name) {
				add("%s.env[%d]: %q is not an environment variable name", at, i, e.Name)
			}
			if _, err := parseTemplate(e.Value); err != nil {
				add("%s.env[%d]: value is not a valid template: %v", at, i, err)
			}
		}
		if h.Config != nil {
			if h.Config.Template == "" {
				add("%s.config.template: is required", at)
			} else if _, err := parseTemplate(h.Config.Template); err != nil {
				add("%s.config.template: %v", at, err)
			}
		}
		if h.UserAgentPrefix != "" {
			if other, dup := uas[h.UserAgentPrefix]; dup {
				add("%s.user_agent_prefix: %q is also used by %s", at, h.UserAgentPrefix, other)
			}
			uas[h.UserAgentPrefix] = at
		}
	}
	return append(p, validateRefusals(f)...)
}

type servedPath struct {
	dialect *Dialect
	path    *Path
	method  string
}

// patternsOverlap reports whether some request path matches both a and b.
func patternsOverlap(a, b []segment) bool {
	// Path.match takes "/x/" for the pattern "/x", so one trailing empty
	// segment does not tell two patterns apart.
	trim := func(s []segment) []segment {
		if n := len(s); n > 0 && s[n-1].param == "" && s[n-1].literal == "" {
			return s[:n-1]
		}
		return s
	}
	a, b = trim(a), trim(b)
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !segmentsOverlap(a[i], b[i]) {
			return false
		}
	}
	return true
}

// segmentsOverlap reports whether one path segment can match both, by the
// rules of Path.match: a placeholder takes a non-empty value ending in its
// suffix, and without a suffix a value with no colon.
func segmentsOverlap(a, b segment) bool {
	if a.param == "" && b.param == "" {
		return a.literal == b.literal
	}
	if a.param == "" {
		a, b = b, a
	}
	if b.param == "" { // a placeholder against a literal
		v, ok := strings.CutSuffix(b.literal, a.suffix)
		return ok && v != "" && (a.suffix != "" || !strings.Contains(v, ":"))
	}
	switch {
	case a.suffix == "" && b.suffix == "":
		return true
	case a.suffix == "":
		return !strings.Contains(b.suffix, ":")
	case b.suffix == "":
		return !strings.Contains(a.suffix, ":")
	}
	return strings.HasSuffix(a.suffix, b.suffix) || strings.HasSuffix(b.suffix, a.suffix)
}

func validateUsage(at string, u *Usage) []string {
	var p []string
	for _, r := range u.Stream.Events {
		switch r.Merge {
		case MergeReplace, MergeAssign:
		default:
			p = append(p, fmt.Sprintf("%s.stream.events: merge %q is not replace or assign", at, r.Merge))
		}
		switch r.End {
		case "", EndCompleted, EndIncomplete, EndFailed:
		default:
			p = append(p, fmt.Sprintf("%s.stream.events: end %q is not completed, incomplete or failed", at, r.End))
		}
		if r.Type != "" && u.Stream.TypePath == "" {
			p = append(p, fmt.Sprintf("%s.stream.events: rule for type %q needs stream.type_path", at, r.Type))
		}
	}
	if u.Body.Usage != "" && u.Fields.Input == "" && u.Fields.Output == "" {
		p = append(p, fmt.Sprintf("%s.fields: input or output path is required when usage is read", at))
	}
	return p
}

// maxModelNameBytes bounds a model_map name. Real ones are under 100
// bytes; the meter keeps at most 512 of a served model (metering).
const maxModelNameBytes = 256

// validateModelMap checks a provider's model_map: every name is one token a
// provider could take (no spaces or control characters, bounded), "*" only
// ends a name, and a value sent as a path segment has no "/".
func validateModelMap(at string, pr *Provider, f *file) []string {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	var pathDialect string
	for _, dn := range pr.Dialects {
		if d, ok := f.Dialects.vals[dn]; ok && modelInPath(d) {
			pathDialect = dn
			break
		}
	}
	for _, k := range sortedKeys(pr.ModelMap) {
		v := pr.ModelMap[k]
		kat := at + "." + k
		if why := modelNameProblem(k); why != "" {
			add("%s: key %s %s", at, shownName(k), why)
			kat = at + "." + shownName(k)
		}
		if why := modelNameProblem(v); why != "" {
			add("%s: %s %s", kat, shownName(v), why)
			continue
		}
		if strings.HasSuffix(v, "*") && !strings.HasSuffix(k, "*") {
			add("%s: %s ends in * but its key does not, so there is nothing for the * to stand for", kat, shownName(v))
		}
		// RewritePathModel escapes a "/" to %2F: the upstream would see one
		// segment no provider names a model by.
		if pathDialect != "" && strings.Contains(v, "/") {
			add("%s: %s contains /, but dialect %s puts the model in the URL path as one segment", kat, shownName(v), pathDialect)
		}
	}
	return p
}

// shownName quotes a model_map name for a problem, cut short when it is
// long enough to bury the message.
func shownName(s string) string {
	if len(s) > 48 {
		return strconv.Quote(s[:40]) + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return strconv.Quote(s)
}

// modelNameProblem says what is wrong with a model_map name, "" when
// nothing is.
func modelNameProblem(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > maxModelNameBytes:
		return fmt.Sprintf("is longer than %d bytes", maxModelNameBytes)
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	case strings.Contains(strings.TrimSuffix(s, "*"), "*"):
		return "has a * before its end; only a final * matches"
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return "contains a space or control character"
		}
	}
	return ""
}

// modelInPath reports whether a path of d names the model in the URL
// (Gemini's "{model}:generateContent").
func modelInPath(d *Dialect) bool {
	for _, pa := range d.Paths {
		for _, seg := range pa.segments {
			if seg.param == "model" {
				return true
			}
		}
	}
	return false
}

func isAuthHeader(h string) bool {
	switch strings.ToLower(h) {
	case "authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization":
		return true
	}
	return false
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
