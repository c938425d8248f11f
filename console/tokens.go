package console

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// Token states, as the list filters them.
const (
	stateActive  = "active"
	stateRevoked = "revoked"
	stateExpired = "expired"
	stateAll     = "all"
)

// issueMigrations hold the issue forms already sent (a hash of each
// form's one-use value), so a form sent twice (a reload of the page that
// showed the token, a double click) issues one token, on every replica.
// Rows older than onceKeep are dropped as new ones come.
var issueMigrations = []string{
	`CREATE TABLE console_issue_once (
		once_hash TEXT PRIMARY KEY,
		at BIGINT NOT NULL)`,
}

const onceKeep = 24 * time.Hour

func migrateTokens(ctx context.Context, db *store.DB) error {
	if err := db.Migrate(ctx, "console_tokens", issueMigrations); err != nil {
		return fmt.Errorf("console tokens: %w", err)
	}
	return nil
}

func newOnce() string {
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b)
}

// useOnce marks the form's one-use value sent; false if it was already.
// A form without one (not a browser's) is not deduplicated.
func (c *Console) useOnce(ctx context.Context, once string) (bool, error) {
	if once == "" {
		return true, nil
	}
	now := c.cfg.now()
	if _, err := c.cfg.DB.ExecContext(ctx, `DELETE FROM console_issue_once WHERE at < $1`, now.Add(-onceKeep).Unix()); err != nil {
		return false, fmt.Errorf("console tokens: %w", err)
	}
	res, err := c.cfg.DB.ExecContext(ctx, `INSERT INTO console_issue_once (once_hash, at) VALUES ($1, $2) ON CONFLICT (once_hash) DO NOTHING`, hashID(once), now.Unix())
	if err != nil {
		return false, fmt.Errorf("console tokens: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

func (c *Console) tokenRoutes(m *http.ServeMux) {
	m.Handle("GET "+Prefix+"tokens", c.authed(c.tokens))
	m.Handle("POST "+Prefix+"tokens/issue", c.post(c.issueToken))
	m.Handle("GET "+Prefix+"tokens/{id}/revoke", c.authed(c.revokeTokenPage))
	m.Handle("POST "+Prefix+"tokens/{id}/revoke", c.post(c.revokeToken))
}

// tokenFilter is the list's filter, from the query string.
type tokenFilter struct {
	Project, User, Workspace, Harness, State string
}

type tokenRow struct {
	ID, Prefix, Workspace, Project, User, Harness string
	Created, Expires, LastUsed, Revoked           string
	State                                         string
	RevokeURL                                     string
}

// issueForm is the issue form as sent; shown again, with the reason,
// when the token was not issued.
type issueForm struct {
	Workspace, Project, User, Harness, TTL, Model string
	// Once is the form's one-use value (useOnce), new each time it is shown.
	Once string
}

type tokensData struct {
	Filter    tokenFilter
	States    []string
	Harnesses []string
	Rows      []tokenRow
	Issue     issueForm
}

func isTokenID(s string) bool {
	return strings.HasPrefix(s, "tok_") && len(s) <= 64 && slug(s) == s
}

func tokenState(t resolver.TokenInfo, now time.Time) string {
	switch {
	case !t.RevokedAt.IsZero():
		return stateRevoked
	case !now.Before(t.ExpiresAt):
		return stateExpired
	}
	return stateActive
}

func fmtStamp(t time.Time, zero string) string {
	if t.IsZero() {
		return zero
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

func (c *Console) tokens(w http.ResponseWriter, r *http.Request, s session) {
	q := r.URL.Query()
	f := tokenFilter{Project: strings.TrimSpace(q.Get("project")), User: strings.TrimSpace(q.Get("user")),
		Workspace: strings.TrimSpace(q.Get("workspace")), Harness: q.Get("harness"), State: q.Get("state")}
	p := page{}
	// Only a token id is echoed: a crafted link cannot put words here.
	if id := q.Get("revoked"); isTokenID(id) {
		p.Flash = "Revoked " + id + ": the proxy refuses it from now on."
	}
	if id := q.Get("issued"); isTokenID(id) {
		p.Flash = "Issued " + id + ". Its token is not shown again; issue another if it was lost."
	}
	c.renderTokens(w, r, s, http.StatusOK, f, issueForm{TTL: resolver.DefaultTokenTTL.String()}, p)
}

// renderTokens renders the list for f, with the issue form holding in;
// p carries a flash or an error.
func (c *Console) renderTokens(w http.ResponseWriter, r *http.Request, s session, status int, f tokenFilter, in issueForm, p page) {
	if f.State == "" {
		f.State = stateActive
	}
	toks, err := c.cfg.Resolver.ListTokens(r.Context(), resolver.TokenFilter{Workspace: f.Workspace, Project: f.Project, User: f.User,
		IncludeRevoked: f.State != stateActive})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	in.Once = newOnce()
	d := tokensData{Filter: f, States: []string{stateActive, stateRevoked, stateExpired, stateAll}, Issue: in}
	for _, h := range c.cfg.Registry.Current().Harnesses() {
		d.Harnesses = append(d.Harnesses, h.Name)
	}
	now := c.cfg.now()
	for _, t := range toks {
		st := tokenState(t, now)
		if f.Harness != "" && t.Harness != f.Harness || f.State != stateAll && st != f.State {
			continue
		}
		row := tokenRow{ID: t.ID, Prefix: t.Prefix, Workspace: t.Workspace, Project: t.Project, User: t.User, Harness: t.Harness,
			Created: fmtStamp(t.CreatedAt, ""), Expires: fmtStamp(t.ExpiresAt, ""), LastUsed: fmtStamp(t.LastUsedAt, "never"),
			Revoked: fmtStamp(t.RevokedAt, ""), State: st}
		if st != stateRevoked {
			row.RevokeURL = Prefix + "tokens/" + url.PathEscape(t.ID) + "/revoke"
		}
		d.Rows = append(d.Rows, row)
	}
	p.Title, p.Nav, p.SignedIn, p.CSRF, p.Data = "Tokens", "tokens", true, s.csrf, d
	c.render(w, r, status, "tokens", p)
}

// issuedData is the page a new token is shown on, its only showing.
type issuedData struct {
	Info   resolver.TokenInfo
	Token  string
	Setups []setupView
	// NoURL says the environment could not be rendered: no proxy URL.
	NoURL bool
}

type setupView struct {
	ID, Harness, Dialect, ConfigFile, Text string
	Rows                                   int
}

// issueToken issues a token through the resolver function the CLI and the
// admin API call, after the checks the admin API makes: every problem at
// once, before a token exists, since a token is shown once and must not be
// issued into an answer that then fails. The token and its environment
// are in this answer's body only: not in a redirect, a flash, a log or the
// audit entry (which redacts it); the page is not cached (no-store).
func (c *Console) issueToken(w http.ResponseWriter, r *http.Request, s session) {
	ctx := r.Context()
	pf := r.PostForm
	in := issueForm{Workspace: strings.TrimSpace(pf.Get("workspace")), Project: strings.TrimSpace(pf.Get("project")),
		User: strings.TrimSpace(pf.Get("user")), Harness: pf.Get("harness"), TTL: strings.TrimSpace(pf.Get("ttl")), Model: strings.TrimSpace(pf.Get("model"))}
	var probs []string
	var ttl time.Duration
	if in.TTL != "" {
		d, err := time.ParseDuration(in.TTL)
		if err != nil {
			probs = append(probs, fmt.Sprintf("lifetime %q is not a duration such as 24h", in.TTL))
		}
		ttl = d
	}
	spec := resolver.TokenSpec{Workspace: in.Workspace, Project: in.Project, User: in.User, Harness: in.Harness, TTL: ttl}
	if err := c.cfg.Resolver.CheckTokenSpec(spec); err != nil {
		probs = append(probs, err.Error())
	}
	reg := c.cfg.Registry.Current()
	if _, err := reg.TokenSetups(in.Harness, registry.EnvOptions{ProxyURL: c.cfg.ProxyURL, Token: resolver.TokenPrefix, Model: in.Model}); err != nil && !errors.Is(err, registry.ErrUnknownHarness) {
		probs = append(probs, err.Error())
	}
	if len(probs) > 0 {
		c.renderTokens(w, r, s, http.StatusUnprocessableEntity, tokenFilter{}, in, page{Error: strings.Join(probs, "; ")})
		return
	}
	if fresh, err := c.useOnce(ctx, pf.Get("once")); err != nil {
		c.fail(w, r, s, err)
		return
	} else if !fresh {
		c.render(w, r, http.StatusConflict, "message", page{Title: "Already issued", Nav: "tokens", SignedIn: true, CSRF: s.csrf,
			Message: "This form was sent before, and its token was shown then, once. It is listed under Tokens; issue another there if it was lost."})
		return
	}
	tok, info, err := c.cfg.Resolver.IssueToken(ctx, spec)
	if err != nil {
		if errors.Is(err, resolver.ErrInvalidArgument) {
			c.renderTokens(w, r, s, http.StatusUnprocessableEntity, tokenFilter{}, in, page{Error: err.Error()})
			return
		}
		c.fail(w, r, s, err)
		return
	}
	c.audited(r, c.cfg.Audit.TokenIssued(ctx, info, tok))
	c.log.Info("console token issued", "session", s.fingerprint(), "token_id", info.ID, "workspace", info.Workspace)
	d := issuedData{Info: info, Token: tok, NoURL: c.cfg.ProxyURL == ""}
	if !d.NoURL {
		setups, err := reg.TokenSetups(in.Harness, registry.EnvOptions{ProxyURL: c.cfg.ProxyURL, Token: tok, Model: in.Model})
		if err != nil {
			// Checked above with the same inputs; a registry reloaded in
			// between is the only way here. The token stands: show it.
			c.log.Error("console token environment", "token_id", info.ID, "err", err)
		}
		for _, st := range setups {
			d.Setups = append(d.Setups, setupView{ID: "token-env-" + slug(st.Harness), Harness: st.Harness, Dialect: st.Dialect, ConfigFile: st.ConfigFile, Text: st.Shell(),
				Rows: strings.Count(st.Shell(), "\n") + 1})
		}
	}
	c.render(w, r, http.StatusOK, "token-issued", page{Title: "Token issued", Nav: "tokens", SignedIn: true, CSRF: s.csrf, Data: d})
}

type revokeData struct {
	Row tokenRow
}

func (c *Console) findToken(r *http.Request, id string) (resolver.TokenInfo, bool, error) {
	toks, err := c.cfg.Resolver.ListTokens(r.Context(), resolver.TokenFilter{IncludeRevoked: true})
	if err != nil {
		return resolver.TokenInfo{}, false, err
	}
	for _, t := range toks {
		if t.ID == id {
			return t, true, nil
		}
	}
	return resolver.TokenInfo{}, false, nil
}

// revokeTokenPage asks to confirm a revocation: a workspace using the
// token stops at its next request.
func (c *Console) revokeTokenPage(w http.ResponseWriter, r *http.Request, s session) {
	id := r.PathValue("id")
	t, ok, err := c.findToken(r, id)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	if !ok {
		c.render(w, r, http.StatusNotFound, "message", page{Title: "Not found", Nav: "tokens", SignedIn: true, CSRF: s.csrf, Message: "There is no token " + id + "."})
		return
	}
	row := tokenRow{ID: t.ID, Prefix: t.Prefix, Workspace: t.Workspace, Project: t.Project, User: t.User, Harness: t.Harness,
		Expires: fmtStamp(t.ExpiresAt, ""), LastUsed: fmtStamp(t.LastUsedAt, "never"), State: tokenState(t, c.cfg.now()),
		RevokeURL: Prefix + "tokens/" + url.PathEscape(t.ID) + "/revoke"}
	c.render(w, r, http.StatusOK, "token-revoke", page{Title: "Revoke token", Nav: "tokens", SignedIn: true, CSRF: s.csrf, Data: revokeData{Row: row}})
}

func (c *Console) revokeToken(w http.ResponseWriter, r *http.Request, s session) {
	id := r.PathValue("id")
	if err := c.cfg.Resolver.RevokeToken(r.Context(), id); err != nil {
		if errors.Is(err, resolver.ErrTokenNotFound) {
			c.render(w, r, http.StatusNotFound, "message", page{Title: "Not found", Nav: "tokens", SignedIn: true, CSRF: s.csrf, Message: "There is no token " + id + "."})
			return
		}
		c.fail(w, r, s, err)
		return
	}
	c.audited(r, c.cfg.Audit.TokenRevoked(r.Context(), id))
	c.log.Info("console token revoked", "session", s.fingerprint(), "token_id", id)
	http.Redirect(w, r, Prefix+"tokens?"+url.Values{"revoked": {id}, "state": {stateAll}}.Encode(), http.StatusSeeOther)
}
