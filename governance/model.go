package governance

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unsafe"

	"github.com/tidwall/gjson"
)

// maxListedPatterns bounds the allowed patterns a refusal lists, so a
// scope with hundreds of rules still gets a message a terminal can show.
const maxListedPatterns = 8

// ResolveModel applies sc's model rules to a request for model: an alias
// (project first, then platform) names the model to send, then every
// level with allow rules must allow it and no level may deny it. It
// returns the model to send, or a *Refusal of kind RefuseModel whose message
// names the model, the scope and what is allowed.
//
// rules may hold other scopes' rules too; only those of sc's levels count.
func ResolveModel(rules []ModelRule, sc Scope, model string) (string, *Refusal) {
	target := model
	if t, ok := alias(rules, sc, ScopeProject, model); ok {
		target = t
	} else if t, ok := alias(rules, sc, ScopePlatform, model); ok {
		target = t
	}
	// A deny anywhere refuses: a narrower scope can never lift it.
	for _, lvl := range ScopeTypes {
		for _, r := range rules {
			if r.Kind == RuleDeny && r.ScopeType == lvl && applies(r, sc) && Glob(r.Pattern, target) {
				return target, modelRefusal(sc, lvl, model, target, r.Pattern, allowed(rules, sc, lvl))
			}
		}
	}
	// Levels intersect: each level that allows anything must allow this.
	for _, lvl := range ScopeTypes {
		pats := allowed(rules, sc, lvl)
		if len(pats) == 0 {
			continue
		}
		ok := false
		for _, p := range pats {
			if Glob(p, target) {
				ok = true
				break
			}
		}
		if !ok {
			return target, modelRefusal(sc, lvl, model, target, "", pats)
		}
	}
	return target, nil
}

// applies reports whether r is a rule of one of sc's levels.
func applies(r ModelRule, sc Scope) bool {
	return r.ScopeType == ScopePlatform || (r.ScopeID != "" && sc.id(r.ScopeType) == r.ScopeID)
}

// alias returns the target of the first alias at level lvl of sc whose
// name is exactly model.
func alias(rules []ModelRule, sc Scope, lvl ScopeType, model string) (string, bool) {
	for _, r := range rules {
		if r.Kind == RuleAlias && r.ScopeType == lvl && applies(r, sc) && r.Pattern == model {
			return r.Target, true
		}
	}
	return "", false
}

// allowed lists the allow patterns at level lvl of sc, without repeats.
func allowed(rules []ModelRule, sc Scope, lvl ScopeType) []string {
	var out []string
	for _, r := range rules {
		if r.Kind == RuleAllow && r.ScopeType == lvl && applies(r, sc) && !contains(out, r.Pattern) {
			out = append(out, r.Pattern)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// modelRefusal words a model refusal at level lvl: the model (and what it
// is an alias of), the scope, the deny rule that matched if one did, and
// what that scope allows.
func modelRefusal(sc Scope, lvl ScopeType, model, target, denied string, pats []string) *Refusal {
	scope := Selector{ScopeType: lvl, ScopeID: sc.id(lvl)}
	name := target
	if target != model {
		name = fmt.Sprintf("%s (alias of %s)", model, target)
	}
	msg := fmt.Sprintf("tollgate: model %s is not allowed for %s", name, scope)
	if denied != "" {
		msg += "; denied: " + denied
	}
	if len(pats) > 0 {
		list := pats[:min(len(pats), maxListedPatterns)]
		msg += "; allowed: " + strings.Join(list, ", ")
		if n := len(pats) - len(list); n > 0 {
			msg += fmt.Sprintf(" and %d more", n)
		}
	}
	policy := string(lvl)
	if scope.ScopeID != "" {
		policy += ":" + scope.ScopeID
	}
	return &Refusal{Kind: RefuseModel, Message: msg, Policy: policy + "/model"}
}

// Errors of a body whose model cannot be read or rewritten.
var (
	ErrNoModel        = errors.New(`request body has no top-level "model" string`)
	ErrDuplicateModel = errors.New(`request body has more than one top-level "model" key`)
)

// BodyModel returns the top-level "model" string of a JSON object body.
// Unlike gjson.Get it refuses a body with two "model" keys: gjson reads the
// first, many JSON decoders the last, so a policy judging one while the
// provider serves the other would be bypassed.
func BodyModel(body []byte) (string, error) {
	_, _, model, err := modelSpan(body)
	return model, err
}

// modelSpan finds the value of body's one top-level "model" member: its
// byte span [start, end) and its string.
func modelSpan(body []byte) (start, end int, model string, err error) {
	if len(body) == 0 {
		return 0, 0, "", ErrNoModel
	}
	// A view, not a copy, of a body that may be megabytes: nothing read
	// from it outlives this call except the cloned model string.
	doc := gjson.Parse(unsafe.String(&body[0], len(body)))
	if !doc.IsObject() {
		return 0, 0, "", ErrNoModel
	}
	// Parse skips leading whitespace without counting it in Index.
	doc.Index = len(body) - len(doc.Raw)
	found := 0
	var val gjson.Result
	doc.ForEach(func(k, v gjson.Result) bool {
		if k.Str == "model" {
			found++
			val = v
		}
		return found < 2
	})
	switch {
	case found > 1:
		return 0, 0, "", ErrDuplicateModel
	case found == 0 || val.Type != gjson.String:
		return 0, 0, "", ErrNoModel
	}
	start, end = val.Index, val.Index+len(val.Raw)
	if start <= 0 || end > len(body) || string(body[start:end]) != val.Raw {
		return 0, 0, "", ErrNoModel
	}
	return start, end, strings.Clone(val.Str), nil
}

// RewriteModel returns body with its top-level "model" string replaced by
// model and every other byte unchanged, so the provider's prompt cache
// still matches (a re-encoded body would not). It never edits body in
// place.
func RewriteModel(body []byte, model string) ([]byte, error) {
	start, end, _, err := modelSpan(body)
	if err != nil {
		return nil, err
	}
	enc, err := json.Marshal(model)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(body)-(end-start)+len(enc))
	out = append(out, body[:start]...)
	out = append(out, enc...)
	return append(out, body[end:]...), nil
}

// RewritePathModel returns a Gemini path ("/v1beta/models/gemini-3.5-flash:
// streamGenerateContent", query optional) with its model segment naming
// model instead. It inverts the registry's "{model}:method" placeholder:
// the model is the segment after "/models/" up to its last colon, or all of
// it without one. Everything else is kept byte for byte; a path with no
// model segment comes back unchanged.
func RewritePathModel(rest, model string) string {
	p, query, hasQuery := strings.Cut(rest, "?")
	i := strings.Index(p, "/models/")
	if i < 0 {
		return rest
	}
	from := i + len("/models/")
	seg := p[from:]
	if j := strings.IndexByte(seg, '/'); j >= 0 {
		seg = seg[:j]
	}
	to := from + len(seg)
	if k := strings.LastIndexByte(seg, ':'); k >= 0 {
		to = from + k
	}
	if to == from {
		return rest
	}
	// A target is one segment: a "/" in it would change the path's shape.
	out := p[:from] + url.PathEscape(model) + p[to:]
	if hasQuery {
		out += "?" + query
	}
	return out
}
