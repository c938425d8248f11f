package console

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tollgate/tollgate/health"
	"github.com/tollgate/tollgate/resolver"
)

// connRow is one harness × dialect of the Connections grid.
type connRow struct {
	ID         string // stable element id: conn-<harness|any>-<dialect>
	Harness    string
	Dialect    string
	Source     string
	Reason     string
	Credential *credView
	// Candidates are shown when the binding names several credentials.
	Candidates []candView
	ConnectURL string
}

type credView struct {
	ID, Name, Provider, Last4, BaseURL, LastUsed string
	Disabled                                     bool
	// Health is the circuit and any refusal this replica saw, "" unknown.
	Health string
}

type candView struct {
	ID, Name, Provider, Reason string
	Priority, Weight           int
	Usable                     bool
	Health                     string
}

// healthText is a credential's health in a few words: its circuit, and
// why and until when it is skipped, if it is.
func healthText(st health.State) string {
	s := st.Circuit
	if st.Reason != "" {
		s += ", " + st.Reason
		if !st.Until.IsZero() {
			s += " until " + st.Until.UTC().Format("15:04:05 UTC")
		}
	}
	return s
}

func (c *Console) healthByID() map[string]string {
	if c.cfg.Health == nil {
		return nil
	}
	m := map[string]string{}
	for _, st := range c.cfg.Health.States() {
		m[st.CredentialID] = healthText(st)
	}
	return m
}

type connectionsData struct {
	Project, User string
	Rows          []connRow
	Projects      []string
	Users         []string
	AdvancedURL   string
	ConnectURL    string
}

// credentialsAndBindings is what the Connections, Advanced and
// Credentials pages all start from: every credential, every binding, and
// the credentials' views by id.
func (c *Console) credentialsAndBindings(ctx context.Context) ([]resolver.Credential, []resolver.Binding, map[string]credView, error) {
	creds, err := c.cfg.Resolver.ListCredentials(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	binds, err := c.cfg.Resolver.ListBindings(ctx, resolver.BindingFilter{})
	if err != nil {
		return nil, nil, nil, err
	}
	return creds, binds, credViews(creds), nil
}

func credViews(cs []resolver.Credential) map[string]credView {
	m := make(map[string]credView, len(cs))
	for _, c := range cs {
		v := credView{ID: c.ID, Name: c.Name, Provider: c.Provider, Last4: c.Last4, BaseURL: c.BaseURL, Disabled: c.Disabled, LastUsed: "never"}
		if !c.LastUsedAt.IsZero() {
			v.LastUsed = c.LastUsedAt.UTC().Format("2006-01-02 15:04 UTC")
		}
		m[c.ID] = v
	}
	return m
}

// scopes lists the projects and users bindings name, for the chooser.
func scopes(bs []resolver.Binding) (projects, users []string) {
	for _, b := range bs {
		switch b.Tier {
		case resolver.TierProject:
			projects = append(projects, b.ScopeID)
		case resolver.TierUser:
			users = append(users, b.ScopeID)
		}
	}
	slices.Sort(projects)
	slices.Sort(users)
	return slices.Compact(projects), slices.Compact(users)
}

func (c *Console) connections(w http.ResponseWriter, r *http.Request, s session) {
	ctx := r.Context()
	q := r.URL.Query()
	project, user := strings.TrimSpace(q.Get("project")), strings.TrimSpace(q.Get("user"))
	view, err := c.cfg.Resolver.ResolutionView(ctx, project, user)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	_, binds, byID, err := c.credentialsAndBindings(ctx)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	healthOf := c.healthByID()
	d := connectionsData{Project: project, User: user, AdvancedURL: Prefix + "connections/advanced?" + scopeQuery(project, user).Encode()}
	d.ConnectURL = Prefix + "connections/connect?" + scopeQuery(project, user).Encode()
	d.Projects, d.Users = scopes(binds)
	for _, res := range view {
		row := connRow{ID: "conn-" + slug(cmp.Or(res.Harness, "any")) + "-" + slug(res.Dialect), Harness: res.Harness, Dialect: res.Dialect, Source: res.Source, Reason: res.Reason}
		if res.CredentialID != "" {
			cv, ok := byID[res.CredentialID]
			if !ok {
				cv = credView{ID: res.CredentialID, Provider: res.Provider, Name: "(deleted)", LastUsed: "never"}
			}
			cv.Health = healthOf[cv.ID]
			row.Credential = &cv
		}
		if len(res.Candidates) > 1 {
			for _, cand := range res.Candidates {
				row.Candidates = append(row.Candidates, candView{ID: cand.CredentialID, Name: byID[cand.CredentialID].Name, Provider: cand.Provider,
					Reason: cand.Reason, Priority: cand.Priority, Weight: cand.Weight, Usable: cand.Usable, Health: healthOf[cand.CredentialID]})
			}
		}
		cq := scopeQuery(project, user)
		cq.Set("dialect", res.Dialect)
		if res.Harness != "" {
			cq.Set("harness", res.Harness)
		}
		row.ConnectURL = Prefix + "connections/connect?" + cq.Encode()
		d.Rows = append(d.Rows, row)
	}
	p := page{Title: "Connections", Nav: "connections", SignedIn: true, CSRF: s.csrf, Data: d}
	if id := q.Get("connected"); id != "" {
		if cv, ok := byID[id]; ok {
			p.Flash = fmt.Sprintf("Connected %s (%s). The grid shows what each harness now uses.", cmp.Or(cv.Name, cv.ID), cv.Provider)
		}
	}
	c.render(w, r, http.StatusOK, "connections", p)
}

func scopeQuery(project, user string) url.Values {
	v := url.Values{}
	if project != "" {
		v.Set("project", project)
	}
	if user != "" {
		v.Set("user", user)
	}
	return v
}

// connectForm is the connect flow's form. It never holds the key: a form
// shown again after an error asks for it again.
type connectForm struct {
	Tier, Project, User, Dialect, Harness string
	Existing                              string // a credential id, or "" for a new key
	Provider, Name, BaseURL               string
	Inactive                              bool

	Dialects    []string
	Harnesses   []string
	Providers   []providerView
	Credentials []credView
	BackURL     string
}

type providerView struct {
	Name     string
	Dialects string
}

func (c *Console) fillChoices(f *connectForm, creds []resolver.Credential) {
	reg := c.cfg.Registry.Current()
	for _, d := range reg.Dialects() {
		f.Dialects = append(f.Dialects, d.Name)
	}
	for _, h := range reg.Harnesses() {
		f.Harnesses = append(f.Harnesses, h.Name)
	}
	for _, p := range reg.Providers() {
		f.Providers = append(f.Providers, providerView{Name: p.Name, Dialects: strings.Join(p.Dialects, ", ")})
	}
	for _, cr := range creds {
		f.Credentials = append(f.Credentials, credViews([]resolver.Credential{cr})[cr.ID])
	}
	f.BackURL = Prefix + "connections?" + scopeQuery(f.Project, f.User).Encode()
}

func (c *Console) connectPage(w http.ResponseWriter, r *http.Request, s session) {
	q := r.URL.Query()
	f := connectForm{Tier: q.Get("tier"), Project: q.Get("project"), User: q.Get("user"), Dialect: q.Get("dialect"), Harness: q.Get("harness")}
	if f.Tier == "" {
		f.Tier = resolver.TierProject
		if f.Project == "" {
			f.Tier = resolver.TierUser
		}
		if f.Project == "" && f.User == "" {
			f.Tier = resolver.TierPlatform
		}
	}
	c.renderConnect(w, r, s, http.StatusOK, f, "")
}

func (c *Console) renderConnect(w http.ResponseWriter, r *http.Request, s session, status int, f connectForm, problem string) {
	creds, err := c.cfg.Resolver.ListCredentials(r.Context())
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.fillChoices(&f, creds)
	c.render(w, r, status, "connect", page{Title: "Connect", Nav: "connections", SignedIn: true, CSRF: s.csrf, Error: problem, Data: f})
}

// connect adds a credential (unless an existing one is chosen) and binds
// it, through the resolver functions the CLI's "credential add" and
// "credential bind" call, so they validate alike: the provider, the https
// base URL, the dialects the provider and harness speak. A new credential
// whose binding is refused is deleted again, so a failed attempt leaves
// nothing behind.
func (c *Console) connect(w http.ResponseWriter, r *http.Request, s session) {
	ctx := r.Context()
	pf := r.PostForm
	f := connectForm{Tier: pf.Get("tier"), Project: strings.TrimSpace(pf.Get("project")), User: strings.TrimSpace(pf.Get("user")),
		Dialect: pf.Get("dialect"), Harness: pf.Get("harness"), Existing: pf.Get("existing"),
		Provider: pf.Get("provider"), Name: strings.TrimSpace(pf.Get("name")), Inactive: pf.Get("inactive") != ""}
	key := pf.Get("key")
	baseURL := strings.TrimSpace(pf.Get("base_url"))
	k := resolver.BindingKey{Tier: f.Tier, Dialect: f.Dialect, Harness: f.Harness}
	switch f.Tier {
	case resolver.TierProject:
		k.ScopeID = f.Project
	case resolver.TierUser:
		k.ScopeID = f.User
	}
	again := func(err error) {
		f.BaseURL = echoableURL(baseURL)
		c.renderConnect(w, r, s, http.StatusUnprocessableEntity, f, err.Error())
	}
	credID := f.Existing
	created := false
	if credID != "" && strings.TrimSpace(key) != "" {
		// Which one was meant is a guess; a key typed in must not be dropped unseen.
		again(errors.New("choose an existing credential or enter a new key, not both"))
		return
	}
	if credID == "" {
		if strings.TrimSpace(key) == "" {
			again(errors.New("enter the provider key, or choose an existing credential"))
			return
		}
		cr, err := c.cfg.Resolver.CreateCredential(ctx, resolver.CredentialSpec{Name: f.Name, Provider: f.Provider, Secret: resolver.NewSecret(key), BaseURL: baseURL})
		if err != nil {
			again(err)
			return
		}
		credID, created = cr.ID, true
		c.audited(r, c.cfg.Audit.CredentialCreated(ctx, cr, key))
	}
	b, err := c.cfg.Resolver.BindCandidates(ctx, k, []resolver.BindCandidate{{CredentialID: credID, Weight: 1}}, resolver.BindOptions{Inactive: f.Inactive})
	if err != nil {
		if created {
			if derr := c.cfg.Resolver.DeleteCredential(ctx, credID); derr != nil {
				c.log.Error("console connect: deleting the credential whose binding was refused", "credential_id", credID, "err", derr)
			} else {
				c.audited(r, c.cfg.Audit.CredentialChanged(ctx, "delete", credID))
			}
		}
		again(err)
		return
	}
	c.audited(r, c.cfg.Audit.Bound(ctx, b))
	c.log.Info("console connect", "session", s.fingerprint(), "credential_id", credID, "tier", k.Tier, "scope_id", k.ScopeID, "dialect", k.Dialect, "harness", k.Harness, "created", created)
	q := scopeQuery(f.Project, f.User)
	q.Set("connected", credID)
	http.Redirect(w, r, Prefix+"connections?"+q.Encode(), http.StatusSeeOther)
}

// echoableURL is the base URL to show again in a refused form: only one
// without user info, query or fragment, the parts where a pasted key
// could hide.
func echoableURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return ""
	}
	return raw
}

type bindingRow struct {
	ID                              string
	Tier, ScopeID, Dialect, Harness string
	Credentials                     []candView
	Active                          bool
	Updated                         string
}

type advancedData struct {
	Project, User string
	Bindings      []bindingRow
	Credentials   []credView
	BackURL       string
	Return        string
}

func (c *Console) advanced(w http.ResponseWriter, r *http.Request, s session) {
	ctx := r.Context()
	q := r.URL.Query()
	creds, binds, byID, err := c.credentialsAndBindings(ctx)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := advancedData{Project: q.Get("project"), User: q.Get("user")}
	d.BackURL = Prefix + "connections?" + scopeQuery(d.Project, d.User).Encode()
	d.Return = r.URL.RequestURI()
	d.Bindings = bindingRows(binds, byID)
	for _, cr := range creds {
		d.Credentials = append(d.Credentials, byID[cr.ID])
	}
	c.render(w, r, http.StatusOK, "advanced", page{Title: "Bindings (advanced)", Nav: "connections", SignedIn: true, CSRF: s.csrf, Data: d})
}

// bindingRows are the rows of a bindings table (the Advanced view's and
// the Credentials page's), with stable element ids.
func bindingRows(binds []resolver.Binding, byID map[string]credView) []bindingRow {
	var rows []bindingRow
	for _, b := range binds {
		row := bindingRow{ID: "binding-" + slug(b.Tier) + "-" + slug(cmp.Or(b.ScopeID, "all")) + "-" + slug(b.Dialect) + "-" + slug(cmp.Or(b.Harness, "any")),
			Tier: b.Tier, ScopeID: b.ScopeID, Dialect: b.Dialect, Harness: b.Harness, Active: b.Active, Updated: b.UpdatedAt.UTC().Format(time.DateTime)}
		for _, bc := range b.Credentials {
			cv := byID[bc.CredentialID]
			row.Credentials = append(row.Credentials, candView{ID: bc.CredentialID, Name: cv.Name, Provider: cv.Provider, Priority: bc.Priority, Weight: bc.Weight})
		}
		rows = append(rows, row)
	}
	return rows
}

func (c *Console) setActive(w http.ResponseWriter, r *http.Request, s session) {
	pf := r.PostForm
	k := resolver.BindingKey{Tier: pf.Get("tier"), ScopeID: pf.Get("scope_id"), Dialect: pf.Get("dialect"), Harness: pf.Get("harness")}
	active := pf.Get("active") == "true"
	if err := c.cfg.Resolver.SetBindingActive(r.Context(), k, active); err != nil {
		if errors.Is(err, resolver.ErrBindingNotFound) || errors.Is(err, resolver.ErrInvalidArgument) {
			c.render(w, r, http.StatusUnprocessableEntity, "message", page{Title: "Not changed", Nav: "connections", SignedIn: true, CSRF: s.csrf, Message: err.Error()})
			return
		}
		c.fail(w, r, s, err)
		return
	}
	verb := "deactivate"
	if active {
		verb = "activate"
	}
	c.audited(r, c.cfg.Audit.BindingChanged(r.Context(), verb, k))
	c.log.Info("console binding", "session", s.fingerprint(), "tier", k.Tier, "scope_id", k.ScopeID, "dialect", k.Dialect, "harness", k.Harness, "active", active)
	http.Redirect(w, r, localReturn(pf.Get("return"), Prefix+"connections/advanced"), http.StatusSeeOther)
}

// localReturn is ret if it is a path of the console, else def: a form
// field must not turn the console into an open redirect.
func localReturn(ret, def string) string {
	u, err := url.Parse(ret)
	if err != nil || u.Scheme != "" || u.Host != "" || !strings.HasPrefix(u.Path, Prefix) || strings.HasPrefix(ret, "//") {
		return def
	}
	return u.RequestURI()
}

func tierLabel(t string) string {
	switch t {
	case resolver.TierProject:
		return "Project"
	case resolver.TierUser:
		return "User"
	case resolver.TierPlatform:
		return "Platform"
	}
	return t
}

// sourceLabel is a row's badge text.
func sourceLabel(s string) string {
	switch s {
	case resolver.SourceProject:
		return "Project override"
	case resolver.SourceUser:
		return "User default"
	case resolver.SourcePlatform:
		return "Platform"
	case resolver.SourceHalted:
		return "Halted"
	case resolver.SourceUnresolved:
		return "Unresolved"
	}
	return s
}

// slug keeps the characters an element id can carry as they are and
// turns any other into "_", so ids stay stable for the browser tests.
func slug(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, s)
}
