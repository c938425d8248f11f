package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/tollgate/tollgate/governance"
)

// limitID and ruleID are the shapes of the ids governance.Store gives rate
// limits and model rules: a flash names nothing else.
var (
	limitID = regexp.MustCompile(`^lim_[a-z2-7]{16}$`)
	ruleID  = regexp.MustCompile(`^rule_[a-z2-7]{16}$`)
)

// limitForm is the rate limit form as typed, kept so a refusal shows it
// again; Errors holds each problem under the field it names.
type limitForm struct {
	ScopeType, ScopeID, Model, Harness string
	RPM, TPM, Concurrency, Mode        string
	Errors                             map[string]string
}

// ruleForm is the model rule form as typed.
type ruleForm struct {
	ScopeType, ScopeID, Kind, Pattern, Target string
	Errors                                    map[string]string
}

func (c *Console) limitRoutes(m *http.ServeMux) {
	m.Handle("POST "+Prefix+"limits/set", c.post(c.limitSet))
	m.Handle("POST "+Prefix+"limits/{id}/delete", c.post(c.limitDelete))
	m.Handle("POST "+Prefix+"rules/set", c.post(c.ruleSet))
	m.Handle("POST "+Prefix+"rules/{id}/delete", c.post(c.ruleDelete))
}

// fieldErrors files each of the store's problems (governance joins them
// with "; ", each naming its field first) under the first of fields it
// starts with, the rest under "form": the page shows every problem at
// once, beside its field, without validating anything itself.
func fieldErrors(err error, fields ...string) map[string]string {
	msg := strings.TrimPrefix(err.Error(), governance.ErrInvalid.Error()+": ")
	out := map[string]string{}
	for _, p := range strings.Split(msg, "; ") {
		key := "form"
		for _, f := range fields {
			if strings.HasPrefix(p, f) {
				key = f
				break
			}
		}
		if out[key] != "" {
			out[key] += "; "
		}
		out[key] += p
	}
	return out
}

// rates reads the form's rates as the admin API's POST reads its body: a
// rate left empty is governance.KeepRate (an updated limit keeps it), a
// rate given must be a whole number.
func (f *limitForm) rates() (governance.Limit, map[string]string) {
	l := governance.Limit{Selector: governance.Selector{ScopeType: governance.ScopeType(f.ScopeType), ScopeID: f.ScopeID, Model: f.Model, Harness: f.Harness},
		Mode: governance.Mode(f.Mode)}
	if l.ScopeType == governance.ScopePlatform {
		l.ScopeID = "" // left over from another scope
	}
	errs := map[string]string{}
	given := false
	for _, r := range []struct {
		name string
		in   string
		out  *int64
	}{{"rpm", f.RPM, &l.RPM}, {"tpm", f.TPM, &l.TPM}, {"concurrency", f.Concurrency, &l.Concurrency}} {
		if r.in == "" {
			continue
		}
		v, err := strconv.ParseInt(strings.ReplaceAll(r.in, "_", ""), 10, 64)
		if err != nil {
			errs[r.name] = fmt.Sprintf("%s: %q is not a whole number", r.name, r.in)
			continue
		}
		*r.out, given = v, true
	}
	// Validated as given (an empty rate counts as none), as decodeLimitBody
	// does, before an empty rate becomes KeepRate, which Validate would
	// call negative.
	if err := l.Validate(); err != nil {
		for k, v := range fieldErrors(err, "scope_type", "scope_id", "model", "mode", "rpm", "set at least one") {
			if k == "set at least one" {
				k = "rpm"
			}
			if errs[k] == "" {
				errs[k] = v
			}
		}
	}
	if !given && len(errs) == 0 {
		errs["rpm"] = "set at least one of rpm, tpm, concurrency"
	}
	for _, r := range []struct {
		in  string
		out *int64
	}{{f.RPM, &l.RPM}, {f.TPM, &l.TPM}, {f.Concurrency, &l.Concurrency}} {
		if r.in == "" {
			*r.out = governance.KeepRate
		}
	}
	return l, errs
}

// limitSet creates or updates a rate limit through governance.Store.SetLimit,
// as "tollgate limit set" and POST /admin/v1/limits do: the limit of the
// same scope, model and harness is updated in place (keeping its buckets
// and any rate left empty), and recorded in the audit log.
func (c *Console) limitSet(w http.ResponseWriter, r *http.Request, s session) {
	if !c.budgetsReady() {
		c.unavailable(w, r, s, "Budgets and limits", "budgets", "Setting a rate limit")
		return
	}
	pf := r.PostForm
	f := limitForm{ScopeType: pf.Get("scope_type"), ScopeID: strings.TrimSpace(pf.Get("scope_id")), Model: strings.TrimSpace(pf.Get("model")),
		Harness: strings.TrimSpace(pf.Get("harness")), RPM: strings.TrimSpace(pf.Get("rpm")), TPM: strings.TrimSpace(pf.Get("tpm")),
		Concurrency: strings.TrimSpace(pf.Get("concurrency")), Mode: pf.Get("mode")}
	l, errs := f.rates()
	ctx := r.Context()
	if len(errs) == 0 {
		var res governance.SetResult
		var err error
		l, res, err = c.cfg.Policies.SetLimit(ctx, l)
		switch {
		case errors.Is(err, governance.ErrInvalid):
			errs = fieldErrors(err, "scope_type", "scope_id", "model", "mode", "rpm")
		case err != nil:
			c.fail(w, r, s, err)
			return
		default:
			c.audited(r, c.cfg.Audit.PolicySet(ctx, "limit", l, string(res)))
			c.reloadPolicies(ctx, res != governance.SetUnchanged)
			c.log.Info("console limit set", "session", s.fingerprint(), "limit_id", l.ID, "result", res)
			http.Redirect(w, r, Prefix+"budgets?"+url.Values{"limit": {l.ID}, "result": {string(res)}}.Encode(), http.StatusSeeOther)
			return
		}
	}
	f.Errors = errs
	c.renderPolicies(w, r, s, http.StatusUnprocessableEntity, policyForms{Limit: f}, page{Error: "The rate limit was not set: see the fields marked below."})
}

// ruleSet adds or updates a model rule through governance.Store.SetRule,
// as "tollgate models allow|deny|alias" and POST /admin/v1/model-rules do.
func (c *Console) ruleSet(w http.ResponseWriter, r *http.Request, s session) {
	if !c.budgetsReady() {
		c.unavailable(w, r, s, "Budgets and limits", "budgets", "Setting a model rule")
		return
	}
	pf := r.PostForm
	f := ruleForm{ScopeType: pf.Get("scope_type"), ScopeID: strings.TrimSpace(pf.Get("scope_id")), Kind: pf.Get("kind"),
		Pattern: strings.TrimSpace(pf.Get("pattern")), Target: strings.TrimSpace(pf.Get("target"))}
	ru := governance.ModelRule{ScopeType: governance.ScopeType(f.ScopeType), ScopeID: f.ScopeID, Kind: governance.RuleKind(f.Kind), Pattern: f.Pattern, Target: f.Target}
	if ru.ScopeType == governance.ScopePlatform {
		ru.ScopeID = ""
	}
	if ru.Kind != governance.RuleAlias {
		ru.Target = "" // the target field is left over from an alias
	}
	ctx := r.Context()
	ru, res, err := c.cfg.Policies.SetRule(ctx, ru)
	switch {
	case errors.Is(err, governance.ErrInvalid):
		f.Errors = fieldErrors(err, "scope_type", "scope_id", "kind", "pattern", "target", "aliases are", "an alias pattern")
		for from, to := range map[string]string{"aliases are": "scope_type", "an alias pattern": "pattern"} {
			if v := f.Errors[from]; v != "" {
				if f.Errors[to] != "" {
					v = f.Errors[to] + "; " + v
				}
				f.Errors[to] = v
				delete(f.Errors, from)
			}
		}
		c.renderPolicies(w, r, s, http.StatusUnprocessableEntity, policyForms{Rule: f}, page{Error: "The model rule was not set: see the fields marked below."})
	case err != nil:
		c.fail(w, r, s, err)
	default:
		c.audited(r, c.cfg.Audit.PolicySet(ctx, "model_rule", ru, string(res)))
		c.reloadPolicies(ctx, res != governance.SetUnchanged)
		c.log.Info("console model rule set", "session", s.fingerprint(), "rule_id", ru.ID, "result", res)
		http.Redirect(w, r, Prefix+"budgets?"+url.Values{"rule": {ru.ID}, "result": {string(res)}}.Encode(), http.StatusSeeOther)
	}
}

// limitDelete and ruleDelete delete as "tollgate limit delete" and
// "tollgate models delete" do. Neither holds spend, so the row's own
// button deletes without a confirm page.
func (c *Console) limitDelete(w http.ResponseWriter, r *http.Request, s session) {
	c.policyDelete(w, r, s, "limit", "rate limit", c.cfg.Policies.DeleteLimit)
}

func (c *Console) ruleDelete(w http.ResponseWriter, r *http.Request, s session) {
	c.policyDelete(w, r, s, "model_rule", "model rule", c.cfg.Policies.DeleteRule)
}

func (c *Console) policyDelete(w http.ResponseWriter, r *http.Request, s session, noun, what string, del func(ctx context.Context, id string) error) {
	if !c.budgetsReady() {
		c.unavailable(w, r, s, "Budgets and limits", "budgets", "Deleting a "+what)
		return
	}
	id, ctx := r.PathValue("id"), r.Context()
	if err := del(ctx, id); err != nil {
		if errors.Is(err, governance.ErrNotFound) {
			c.render(w, r, http.StatusUnprocessableEntity, "message", page{Title: "Not changed", Nav: "budgets", SignedIn: true, CSRF: s.csrf,
				Message: fmt.Sprintf("There is no %s %q: it may have been deleted already.", what, id)})
			return
		}
		c.fail(w, r, s, err)
		return
	}
	c.audited(r, c.cfg.Audit.PolicyDeleted(ctx, noun, id))
	c.reloadPolicies(ctx, true)
	c.log.Info("console "+noun+" delete", "session", s.fingerprint(), "id", id)
	http.Redirect(w, r, Prefix+"budgets?"+url.Values{"deleted": {id}}.Encode(), http.StatusSeeOther)
}
