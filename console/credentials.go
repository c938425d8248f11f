package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/resolver"
)

// doneName is what a confirmation may name: a credential id or a binding
// as the audit log names it.
var doneName = regexp.MustCompile(`^[A-Za-z0-9._:/-]{1,200}$`)

// bindSlots is how many candidates the bind form offers; a longer
// failover chain is one the CLI or the admin API builds.
const bindSlots = 4

func (c *Console) credentialRoutes(m *http.ServeMux) {
	m.Handle("GET "+Prefix+"credentials", c.authed(c.credentials))
	m.Handle("POST "+Prefix+"credentials/add", c.post(c.addCredential))
	m.Handle("POST "+Prefix+"credentials/{id}/disable", c.post(c.credentialOp("disable")))
	m.Handle("POST "+Prefix+"credentials/{id}/enable", c.post(c.credentialOp("enable")))
	m.Handle("GET "+Prefix+"credentials/{id}/delete", c.authed(c.deleteCredentialPage))
	m.Handle("POST "+Prefix+"credentials/{id}/delete", c.post(c.credentialOp("delete")))
	m.Handle("POST "+Prefix+"bindings/bind", c.post(c.bind))
	m.Handle("POST "+Prefix+"bindings/unbind", c.post(c.unbind))
	m.Handle("POST "+Prefix+"platform-keys/set", c.post(c.setPlatformKey))
	m.Handle("GET "+Prefix+"platform-keys/{provider}/delete", c.authed(c.deletePlatformKeyPage))
	m.Handle("POST "+Prefix+"platform-keys/{provider}/delete", c.post(c.deletePlatformKey))
}

// credRow is a credential of the list, with where it is bound.
type credRow struct {
	credView
	BoundAt   []string
	DeleteURL string
}

// addForm is the add form as sent, without the key: a form shown again
// asks for the key again.
type addForm struct {
	Name, Provider, BaseURL string
}

type bindSlot struct {
	Index            int
	ID               string
	Priority, Weight string
	PriorityHint     int
}

type bindForm struct {
	Tier, ScopeID, Dialect, Harness string
	Inactive                        bool
	Slots                           []bindSlot
}

// platformKeyRow is a provider of the Platform keys section: its key, or
// none.
type platformKeyRow struct {
	Provider, Dialects string
	// Key is nil when the provider has no platform key.
	Key       *credView
	DeleteURL string
}

// credForms are the forms of the Credentials page as sent, none with its
// key: a form shown again asks for the key again.
type credForms struct {
	Add  addForm
	Bind bindForm
	// Platform is the provider the platform key form had chosen.
	Platform string
}

func newCredForms() credForms { return credForms{Bind: newBindForm()} }

type credentialsData struct {
	PlatformKeys []platformKeyRow
	Platform     string
	Credentials  []credRow
	Bindings     []bindingRow
	Add          addForm
	Bind         bindForm
	Providers    []providerView
	Dialects     []string
	Harnesses    []string
	Return       string
	AdvancedURL  string
}

func newBindForm() bindForm {
	f := bindForm{Tier: resolver.TierProject}
	for i := range bindSlots {
		f.Slots = append(f.Slots, bindSlot{Index: i, PriorityHint: i})
	}
	return f
}

func (c *Console) credentials(w http.ResponseWriter, r *http.Request, s session) {
	q := r.URL.Query()
	p := page{}
	// Only an id or a binding's name is echoed: a crafted link cannot put
	// words here.
	verb := map[string]string{"add": "Added", "disable": "Disabled", "enable": "Enabled", "delete": "Deleted", "bind": "Bound", "unbind": "Unbound",
		"platform-set": "Set the platform key of", "platform-delete": "Removed the platform key of"}[q.Get("what")]
	if id := q.Get("done"); verb != "" && doneName.MatchString(id) {
		p.Flash = verb + " " + id + "."
	}
	c.renderCredentials(w, r, s, http.StatusOK, newCredForms(), p)
}

func (c *Console) renderCredentials(w http.ResponseWriter, r *http.Request, s session, status int, forms credForms, p page) {
	ctx := r.Context()
	creds, binds, byID, err := c.credentialsAndBindings(ctx)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	pks, err := c.cfg.Resolver.PlatformKeys(ctx)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	healthOf := c.healthByID()
	boundAt := map[string][]string{}
	for _, b := range binds {
		where := bindingText(b.BindingKey)
		if !b.Active {
			where += " (inactive)"
		}
		for _, bc := range b.Credentials {
			boundAt[bc.CredentialID] = append(boundAt[bc.CredentialID], where)
		}
	}
	d := credentialsData{Add: forms.Add, Bind: forms.Bind, Platform: forms.Platform, Return: Prefix + "credentials", AdvancedURL: Prefix + "connections/advanced"}
	d.PlatformKeys = platformKeyRows(pks)
	for _, cr := range creds {
		v := byID[cr.ID]
		v.Health = healthOf[cr.ID]
		d.Credentials = append(d.Credentials, credRow{credView: v, BoundAt: boundAt[cr.ID], DeleteURL: Prefix + "credentials/" + url.PathEscape(cr.ID) + "/delete"})
	}
	d.Bindings = bindingRows(binds, byID)
	var f connectForm
	c.fillChoices(&f, creds)
	d.Providers, d.Dialects, d.Harnesses = f.Providers, f.Dialects, f.Harnesses
	// The bind form offers every credential, named as the list shows it.
	p.Title, p.Nav, p.SignedIn, p.CSRF = "Credentials and bindings", "credentials", true, s.csrf
	p.Data = struct {
		credentialsData
		Choices []credView
	}{d, f.Credentials}
	c.render(w, r, status, "credentials", p)
}

// refusal is an error the form's input caused, shown with the form; any
// other is the store's, shown as the error page.
func refusal(err error) bool {
	for _, e := range []error{resolver.ErrInvalidArgument, resolver.ErrCredentialNotFound, resolver.ErrBindingNotFound,
		resolver.ErrDialectMismatch, resolver.ErrHTTPBaseURL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// refused answers a write's error: a refusal comes back on the page with
// forms as sent, any other error is the error page.
func (c *Console) refused(w http.ResponseWriter, r *http.Request, s session, err error, forms credForms) {
	if !refusal(err) {
		c.fail(w, r, s, err)
		return
	}
	c.renderCredentials(w, r, s, http.StatusUnprocessableEntity, forms, page{Error: err.Error()})
}

func (c *Console) done(w http.ResponseWriter, r *http.Request, what, id string) {
	http.Redirect(w, r, Prefix+"credentials?"+url.Values{"what": {what}, "done": {id}}.Encode(), http.StatusSeeOther)
}

// addCredential adds a credential through the resolver function "tollgate
// credential add" and the admin API call, so it is checked alike (the
// provider, the key's form, an https base URL). The key is write-only:
// a refused form comes back without it.
func (c *Console) addCredential(w http.ResponseWriter, r *http.Request, s session) {
	pf := r.PostForm
	key := pf.Get("key")
	baseURL := strings.TrimSpace(pf.Get("base_url"))
	f := addForm{Name: strings.TrimSpace(pf.Get("name")), Provider: pf.Get("provider")}
	cr, err := c.cfg.Resolver.CreateCredential(r.Context(), resolver.CredentialSpec{Name: f.Name, Provider: f.Provider, Secret: resolver.NewSecret(key), BaseURL: baseURL})
	if err != nil {
		f.BaseURL = echoableURL(baseURL)
		c.refused(w, r, s, err, credForms{Add: f, Bind: newBindForm()})
		return
	}
	c.audited(r, c.cfg.Audit.CredentialCreated(r.Context(), cr, key))
	c.log.Info("console credential added", "session", s.fingerprint(), "credential_id", cr.ID, "provider", cr.Provider)
	c.done(w, r, "add", cr.ID)
}

// credentialOp disables, enables or deletes the credential the path names.
func (c *Console) credentialOp(verb string) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, s session) {
		id := r.PathValue("id")
		var err error
		switch verb {
		case "disable":
			err = c.cfg.Resolver.DisableCredential(r.Context(), id)
		case "enable":
			err = c.cfg.Resolver.EnableCredential(r.Context(), id)
		case "delete":
			err = c.cfg.Resolver.DeleteCredential(r.Context(), id)
		}
		if err != nil {
			c.refused(w, r, s, err, newCredForms())
			return
		}
		c.audited(r, c.cfg.Audit.CredentialChanged(r.Context(), verb, id))
		c.log.Info("console credential "+verb, "session", s.fingerprint(), "credential_id", id)
		c.done(w, r, verb, id)
	}
}

type deleteData struct {
	Cred    credRow
	Binding []bindingRow
}

// deleteCredentialPage asks to confirm a deletion, naming the bindings
// that go with the credential.
func (c *Console) deleteCredentialPage(w http.ResponseWriter, r *http.Request, s session) {
	ctx := r.Context()
	id := r.PathValue("id")
	creds, err := c.cfg.Resolver.ListCredentials(ctx)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	byID := credViews(creds)
	v, ok := byID[id]
	if !ok {
		c.render(w, r, http.StatusNotFound, "message", page{Title: "Not found", Nav: "credentials", SignedIn: true, CSRF: s.csrf, Message: "There is no credential " + id + "."})
		return
	}
	binds, err := c.cfg.Resolver.ListBindings(ctx, resolver.BindingFilter{CredentialID: id})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := deleteData{Cred: credRow{credView: v, DeleteURL: Prefix + "credentials/" + url.PathEscape(id) + "/delete"}, Binding: bindingRows(binds, byID)}
	c.render(w, r, http.StatusOK, "credential-delete", page{Title: "Delete credential", Nav: "credentials", SignedIn: true, CSRF: s.csrf, Data: d})
}

// bind binds the chosen credentials, in the order given, through the
// resolver function the CLI and the admin API call (which checks ids,
// dialects, ranges and duplicates). As in the admin API, an empty
// priority is the candidate's place in the list (a failover chain) and an
// empty weight is 1.
func (c *Console) bind(w http.ResponseWriter, r *http.Request, s session) {
	pf := r.PostForm
	f := bindForm{Tier: pf.Get("tier"), ScopeID: strings.TrimSpace(pf.Get("scope_id")), Dialect: pf.Get("dialect"), Harness: pf.Get("harness"),
		Inactive: pf.Get("inactive") != ""}
	var cands []resolver.BindCandidate
	var probs []string
	for i := range bindSlots {
		n := strconv.Itoa(i)
		slot := bindSlot{Index: i, PriorityHint: i, ID: pf.Get("cand_" + n), Priority: strings.TrimSpace(pf.Get("cand_" + n + "_priority")), Weight: strings.TrimSpace(pf.Get("cand_" + n + "_weight"))}
		f.Slots = append(f.Slots, slot)
		if slot.ID == "" {
			continue
		}
		bc := resolver.BindCandidate{CredentialID: slot.ID, Priority: len(cands), Weight: 1}
		if slot.Priority != "" {
			v, err := strconv.Atoi(slot.Priority)
			if err != nil {
				probs = append(probs, fmt.Sprintf("candidate %d: priority %q is not a number", i+1, slot.Priority))
			}
			bc.Priority = v
		}
		if slot.Weight != "" {
			v, err := strconv.Atoi(slot.Weight)
			if err != nil || v == 0 {
				probs = append(probs, fmt.Sprintf("candidate %d: weight must be a number of at least 1 (give a standby a later priority instead)", i+1))
			}
			bc.Weight = v
		}
		cands = append(cands, bc)
	}
	if len(cands) == 0 {
		probs = append(probs, "choose at least one credential")
	}
	k := resolver.BindingKey{Tier: f.Tier, ScopeID: f.ScopeID, Dialect: f.Dialect, Harness: f.Harness}
	if f.Tier == resolver.TierPlatform {
		k.ScopeID = ""
	}
	again := func(msg string) {
		c.renderCredentials(w, r, s, http.StatusUnprocessableEntity, credForms{Bind: f}, page{Error: msg})
	}
	if len(probs) > 0 {
		again(strings.Join(probs, "; "))
		return
	}
	b, err := c.cfg.Resolver.BindCandidates(r.Context(), k, cands, resolver.BindOptions{Inactive: f.Inactive})
	if err != nil {
		if !refusal(err) {
			c.fail(w, r, s, err)
			return
		}
		again(err.Error())
		return
	}
	c.audited(r, c.cfg.Audit.Bound(r.Context(), b))
	c.log.Info("console bind", "session", s.fingerprint(), "tier", k.Tier, "scope_id", k.ScopeID, "dialect", k.Dialect, "harness", k.Harness, "credentials", len(cands))
	c.done(w, r, "bind", audit.BindingTarget(k.Tier, k.ScopeID, k.Dialect, k.Harness))
}

func (c *Console) unbind(w http.ResponseWriter, r *http.Request, s session) {
	pf := r.PostForm
	k := resolver.BindingKey{Tier: pf.Get("tier"), ScopeID: pf.Get("scope_id"), Dialect: pf.Get("dialect"), Harness: pf.Get("harness")}
	if err := c.cfg.Resolver.Unbind(r.Context(), k); err != nil {
		c.refused(w, r, s, err, newCredForms())
		return
	}
	c.audited(r, c.cfg.Audit.BindingChanged(r.Context(), "unbind", k))
	c.log.Info("console unbind", "session", s.fingerprint(), "tier", k.Tier, "scope_id", k.ScopeID, "dialect", k.Dialect, "harness", k.Harness)
	c.done(w, r, "unbind", audit.BindingTarget(k.Tier, k.ScopeID, k.Dialect, k.Harness))
}

// bindingText names a binding in a confirmation.
func bindingText(k resolver.BindingKey) string {
	s := tierLabel(k.Tier)
	if k.ScopeID != "" {
		s += " " + k.ScopeID
	}
	s += " · " + k.Dialect
	if k.Harness != "" {
		s += " · " + k.Harness
	}
	return s
}

func platformKeyDeleteURL(provider string) string {
	return Prefix + "platform-keys/" + url.PathEscape(provider) + "/delete"
}

func platformKeyRows(pks []resolver.PlatformKey) []platformKeyRow {
	out := make([]platformKeyRow, 0, len(pks))
	for _, pk := range pks {
		row := platformKeyRow{Provider: pk.Provider, Dialects: strings.Join(pk.Dialects, ", "), DeleteURL: platformKeyDeleteURL(pk.Provider)}
		if pk.Credential != nil {
			v := credViews([]resolver.Credential{*pk.Credential})[pk.Credential.ID]
			row.Key = &v
		}
		out = append(out, row)
	}
	return out
}

// setPlatformKey sets or replaces a provider's platform key through the
// resolver function "tollgate credential set --platform" and PUT
// /admin/v1/platform-keys/{provider} call, so it is checked and bound
// alike. The key is write-only: a refused form comes back without it.
func (c *Console) setPlatformKey(w http.ResponseWriter, r *http.Request, s session) {
	provider, key := r.PostForm.Get("provider"), r.PostForm.Get("key")
	cr, err := c.cfg.Resolver.SetPlatformKey(r.Context(), provider, resolver.NewSecret(key))
	if err != nil {
		c.refused(w, r, s, err, credForms{Bind: newBindForm(), Platform: provider})
		return
	}
	c.audited(r, c.cfg.Audit.PlatformKeySet(r.Context(), cr, key))
	c.log.Info("console platform key set", "session", s.fingerprint(), "credential_id", cr.ID, "provider", cr.Provider)
	c.done(w, r, "platform-set", cr.Provider)
}

type platformKeyDeleteData struct {
	Row platformKeyRow
	// Bindings are those that name the key, at every tier.
	Bindings []bindingRow
	// Elsewhere says a project or user binding names the key.
	Elsewhere bool
}

// deletePlatformKeyPage asks to confirm a platform key's removal, naming
// the bindings that go or stop with it.
func (c *Console) deletePlatformKeyPage(w http.ResponseWriter, r *http.Request, s session) {
	ctx := r.Context()
	provider := r.PathValue("provider")
	pks, err := c.cfg.Resolver.PlatformKeys(ctx)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	var row *platformKeyRow
	for _, pr := range platformKeyRows(pks) {
		if pr.Provider == provider && pr.Key != nil {
			row = &pr
		}
	}
	if row == nil {
		c.render(w, r, http.StatusNotFound, "message", page{Title: "Not found", Nav: "credentials", SignedIn: true, CSRF: s.csrf,
			Message: "There is no platform key for " + provider + "."})
		return
	}
	creds, err := c.cfg.Resolver.ListCredentials(ctx)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	binds, err := c.cfg.Resolver.ListBindings(ctx, resolver.BindingFilter{CredentialID: row.Key.ID})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := platformKeyDeleteData{Row: *row, Bindings: bindingRows(binds, credViews(creds))}
	for _, b := range binds {
		d.Elsewhere = d.Elsewhere || b.Tier != resolver.TierPlatform
	}
	c.render(w, r, http.StatusOK, "platform-key-delete", page{Title: "Remove platform key", Nav: "credentials", SignedIn: true, CSRF: s.csrf, Data: d})
}

// deletePlatformKey removes the provider's platform key through the
// resolver function "tollgate credential delete --platform" and DELETE
// /admin/v1/platform-keys/{provider} call.
func (c *Console) deletePlatformKey(w http.ResponseWriter, r *http.Request, s session) {
	cr, err := c.cfg.Resolver.DeletePlatformKey(r.Context(), r.PathValue("provider"))
	if err != nil {
		c.refused(w, r, s, err, newCredForms())
		return
	}
	c.audited(r, c.cfg.Audit.PlatformKeyDeleted(r.Context(), cr))
	c.log.Info("console platform key removed", "session", s.fingerprint(), "credential_id", cr.ID, "provider", cr.Provider)
	c.done(w, r, "platform-delete", cr.Provider)
}
