package resolver

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tollgate/tollgate/registry"
)

// Credential kinds. Only API keys exist today; the kind column leaves room
// for OAuth credentials, which must never go through the key swap.
const (
	KindAPIKey = "api_key"
)

// Tiers a binding places a credential at, in resolution order.
const (
	TierProject  = "project"
	TierUser     = "user"
	TierPlatform = "platform"
)

// maxSecretLen bounds a stored secret; provider keys are under 200 bytes
// and OAuth blobs a few KiB.
const maxSecretLen = 8 << 10

// last4MinLen is the shortest secret whose last four characters are shown
// in listings: for shorter ones four characters give away too much.
const last4MinLen = 12

// CredentialSpec describes a credential to create.
type CredentialSpec struct {
	// Name is a label for listings.
	Name string
	// Provider is a registry provider name. Required.
	Provider string
	// Kind is KindAPIKey (the default when empty).
	Kind string
	// Secret is the key. Surrounding whitespace is dropped; it must then
	// be printable ASCII without spaces, so it cannot smuggle a header.
	Secret Secret
	// BaseURL optionally overrides the provider's base URL. It must be
	// https (http only with Config.AllowHTTPBaseURL), without credentials,
	// query or fragment.
	BaseURL string
}

// Credential describes a stored credential. It never holds the secret.
type Credential struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Provider string `json:"provider"`
	Kind     string `json:"kind"`
	BaseURL  string `json:"base_url,omitempty"`
	// Last4 is the secret's last four characters, empty for short secrets.
	Last4 string `json:"last4,omitempty"`
	// KeyID names the master key the secret is encrypted with.
	KeyID      string    `json:"key_id"`
	Disabled   bool      `json:"disabled"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
}

// BindingKey identifies a binding: one per tier, scope, dialect and harness.
type BindingKey struct {
	// Tier is TierProject, TierUser or TierPlatform.
	Tier string `json:"tier"`
	// ScopeID is the project id (project tier) or the user id (user tier);
	// empty for the platform tier.
	ScopeID string `json:"scope_id,omitempty"`
	// Dialect is a registry dialect name.
	Dialect string `json:"dialect"`
	// Harness narrows the binding to one harness; empty means every
	// harness on the dialect.
	Harness string `json:"harness,omitempty"`
}

// Binding places credentials at a tier for a dialect.
type Binding struct {
	BindingKey
	// CredentialID is the first of Credentials, the one a binding of one
	// credential names.
	CredentialID string `json:"credential_id"`
	// Credentials are every credential of the binding in the order they
	// are tried: priority, then the order they were given in.
	Credentials []BindCandidate `json:"credentials"`
	Active      bool            `json:"active"`
	CreatedAt   time.Time       `json:"created_at"`
	UpdatedAt   time.Time       `json:"updated_at"`
}

// Bounds of a binding's candidates: enough for any failover chain, small
// enough that a draw is a few additions and a typo (a weight of 1e9) is
// refused.
const (
	MaxCandidates = 16
	MaxPriority   = 1000
	MaxWeight     = 1000
)

// BindCandidate is one credential of a binding. Candidates are tried in
// priority order, lowest first; among those of one priority each request
// draws the order, weighted, so a candidate of weight w comes first in
// w/Σw of the requests (the others follow as failover alternates).
type BindCandidate struct {
	CredentialID string `json:"id"`
	// Priority is 0 to MaxPriority.
	Priority int `json:"priority"`
	// Weight is 1 to MaxWeight; 0 means 1. There is no weight that is
	// never drawn: a standby gets a later priority.
	Weight int `json:"weight"`
}

// BindingFilter narrows ListBindings; empty fields match everything.
type BindingFilter struct {
	Tier         string
	ScopeID      string
	Dialect      string
	CredentialID string
}

func (s *Service) checkSecret(sec Secret) (string, error) {
	v := strings.TrimSpace(sec.Reveal())
	switch {
	case v == "":
		return "", invalid("key is required")
	case len(v) > maxSecretLen:
		return "", invalid("key is longer than %d bytes", maxSecretLen)
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return "", invalid("key must be printable ASCII without spaces")
		}
	}
	return v, nil
}

// checkBaseURL validates an override at write time and again at use. Its
// messages never repeat the URL, which could carry credentials.
func (s *Service) checkBaseURL(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil || u.Host == "":
		return "", invalid("base_url is not an absolute URL")
	case u.User != nil:
		return "", invalid("base_url must not carry credentials")
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return "", invalid("base_url must not carry a query or fragment")
	case u.Scheme == "https":
	case u.Scheme == "http" && s.cfg.AllowHTTPBaseURL:
	case u.Scheme == "http":
		// The setting is named: without it an operator cannot tell a typo
		// from a policy.
		e := invalid("base_url is http://, which this server refuses unless TOLLGATE_ALLOW_HTTP_BASE_URL=true; use https")
		e.is = append(e.is, ErrHTTPBaseURL)
		return "", e
	default:
		return "", invalid("base_url must be https")
	}
	if err := s.baseURLPolicy().CheckHost(u.Hostname()); err != nil {
		return "", &argError{problems: []string{"base_url: " + err.Error()}, is: []error{err}}
	}
	return strings.TrimRight(raw, "/"), nil
}

func last4(v string) string {
	if len(v) < last4MinLen {
		return ""
	}
	return v[len(v)-4:]
}

// CreateCredential stores a credential, its secret encrypted with the
// master key. The provider must be in the registry.
func (s *Service) CreateCredential(ctx context.Context, spec CredentialSpec) (Credential, error) {
	c, plain, err := s.prepareCredential(spec)
	if err != nil {
		return Credential{}, fmt.Errorf("create credential: %w", err)
	}
	err = s.write(ctx, change{changeCredential, c.ID}, func(tx *sql.Tx) error {
		return s.insertCredential(ctx, tx, &c, plain)
	})
	if err != nil {
		return Credential{}, fmt.Errorf("create credential: %w", err)
	}
	return c, nil
}

func (s *Service) prepareCredential(spec CredentialSpec) (Credential, string, error) {
	var p argProblems
	kind := spec.Kind
	if kind == "" {
		kind = KindAPIKey
	}
	if kind != KindAPIKey {
		p.addf("kind %q is not %s", kind, KindAPIKey)
	}
	p.checkProvider(s.reg.Current(), spec.Provider)
	plain, err := s.checkSecret(spec.Secret)
	p.add(err)
	base, err := s.checkBaseURL(spec.BaseURL)
	p.add(err)
	if err := p.err(); err != nil {
		return Credential{}, "", err
	}
	id, err := newID("cred_")
	if err != nil {
		return Credential{}, "", err
	}
	now := s.now()
	return Credential{
		ID: id, Name: spec.Name, Provider: spec.Provider, Kind: kind, BaseURL: base,
		Last4: last4(plain), CreatedAt: now, UpdatedAt: now,
	}, plain, nil
}

func (s *Service) insertCredential(ctx context.Context, tx *sql.Tx, c *Credential, plain string) error {
	k := s.keys.Load().current
	ct, err := k.seal(c.ID, plain)
	if err != nil {
		return err
	}
	c.KeyID = k.id
	_, err = tx.ExecContext(ctx, `INSERT INTO resolver_credentials
		(id, name, provider, kind, base_url, key_id, ciphertext, last4, disabled, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		c.ID, c.Name, c.Provider, c.Kind, c.BaseURL, c.KeyID, ct, c.Last4, c.Disabled, c.CreatedAt, c.UpdatedAt)
	return err
}

const credentialColumns = `id, name, provider, kind, base_url, last4, key_id, disabled, created_at, updated_at, last_used_at`

type scanner interface{ Scan(...any) error }

func (s *Service) scanCredential(r scanner) (Credential, error) {
	var c Credential
	var used sql.NullTime
	if err := r.Scan(&c.ID, &c.Name, &c.Provider, &c.Kind, &c.BaseURL, &c.Last4, &c.KeyID, &c.Disabled, &c.CreatedAt, &c.UpdatedAt, &used); err != nil {
		return Credential{}, err
	}
	c.CreatedAt, c.UpdatedAt = c.CreatedAt.UTC(), c.UpdatedAt.UTC()
	if used.Valid {
		c.LastUsedAt = used.Time.UTC()
	}
	if p, ok := s.usage.pendingCred(c.ID); ok && p.After(c.LastUsedAt) {
		c.LastUsedAt = p
	}
	return c, nil
}

// GetCredential returns the credential with id, without its secret, or
// ErrCredentialNotFound.
func (s *Service) GetCredential(ctx context.Context, id string) (Credential, error) {
	c, err := s.scanCredential(s.db.QueryRowContext(ctx, `SELECT `+credentialColumns+` FROM resolver_credentials WHERE id = $1`, id))
	if isNoRows(err) {
		return Credential{}, fmt.Errorf("credential %s: %w", id, ErrCredentialNotFound)
	}
	if err != nil {
		return Credential{}, fmt.Errorf("credential %s: %w", id, err)
	}
	return c, nil
}

// ListCredentials lists every credential, oldest first, without secrets.
func (s *Service) ListCredentials(ctx context.Context) ([]Credential, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+credentialColumns+` FROM resolver_credentials ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list credentials: %w", err)
	}
	defer rows.Close()
	var out []Credential
	for rows.Next() {
		c, err := s.scanCredential(rows)
		if err != nil {
			return nil, fmt.Errorf("list credentials: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list credentials: %w", err)
	}
	return out, nil
}

// DisableCredential stops a credential from resolving: a binding that
// names others too resolves to its next usable one; a project binding
// left with none halts, a user or platform binding falls through.
func (s *Service) DisableCredential(ctx context.Context, id string) error {
	return s.setDisabled(ctx, id, true)
}

// EnableCredential undoes DisableCredential.
func (s *Service) EnableCredential(ctx context.Context, id string) error {
	return s.setDisabled(ctx, id, false)
}

func (s *Service) setDisabled(ctx context.Context, id string, disabled bool) error {
	err := s.write(ctx, change{changeCredential, id}, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE resolver_credentials SET disabled = $1, updated_at = $2 WHERE id = $3`, disabled, s.now(), id)
		return mustAffect(res, err, ErrCredentialNotFound)
	})
	if err != nil {
		return fmt.Errorf("credential %s: %w", id, err)
	}
	return nil
}

// SetCredentialSecret replaces a credential's secret (a key rotation at
// the provider), keeping its id and bindings.
func (s *Service) SetCredentialSecret(ctx context.Context, id string, secret Secret) error {
	plain, err := s.checkSecret(secret)
	if err != nil {
		return fmt.Errorf("credential %s: %w", id, err)
	}
	err = s.write(ctx, change{changeCredential, id}, func(tx *sql.Tx) error {
		return s.updateSecret(ctx, tx, id, plain)
	})
	if err != nil {
		return fmt.Errorf("credential %s: %w", id, err)
	}
	return nil
}

func (s *Service) updateSecret(ctx context.Context, tx *sql.Tx, id, plain string) error {
	k := s.keys.Load().current
	ct, err := k.seal(id, plain)
	if err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `UPDATE resolver_credentials SET key_id = $1, ciphertext = $2, last4 = $3, disabled = $4, updated_at = $5 WHERE id = $6`,
		k.id, ct, last4(plain), false, s.now(), id)
	return mustAffect(res, err, ErrCredentialNotFound)
}

// DeleteCredential deletes a credential and deactivates, in the same
// transaction, every binding that used it and has no other credential left.
// The bindings (and the deleted credential's place among a binding's
// candidates) stay, so listings show what lost its key, and a project whose
// key was deleted halts instead of silently moving its spend to the user's
// or the platform's key. A binding that still names a credential that
// exists stays active and resolves to it: its administrator chose that
// failover. Unbind a binding to let the project fall through;
// SetBindingActive refuses to reactivate a binding whose credentials are
// all gone.
func (s *Service) DeleteCredential(ctx context.Context, id string) error {
	err := s.write(ctx, change{changeCredential, id}, func(tx *sql.Tx) error {
		return s.deleteCredential(ctx, tx, id)
	})
	if err != nil {
		return fmt.Errorf("delete credential %s: %w", id, err)
	}
	return nil
}

// orphanedBy selects the resolver_bindings rows that name the credential
// $1 (deleted already) and no credential that still exists.
const orphanedBy = `(credential_id = $1 OR EXISTS (SELECT 1 FROM resolver_binding_candidates a WHERE ` + candidatesOfBinding + ` AND a.credential_id = $1))
	AND NOT EXISTS (SELECT 1 FROM resolver_credentials k WHERE k.id = resolver_bindings.credential_id)
	AND NOT EXISTS (SELECT 1 FROM resolver_binding_candidates a JOIN resolver_credentials k ON k.id = a.credential_id WHERE ` + candidatesOfBinding + `)`

// deleteCredential is DeleteCredential inside tx.
func (s *Service) deleteCredential(ctx context.Context, tx *sql.Tx, id string) error {
	res, err := tx.ExecContext(ctx, `DELETE FROM resolver_credentials WHERE id = $1`, id)
	if err := mustAffect(res, err, ErrCredentialNotFound); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `UPDATE resolver_bindings SET active = $2, updated_at = $3 WHERE `+orphanedBy, id, false, s.now())
	return err
}

// platformCredentialName names the credential SetPlatformKey manages.
func platformCredentialName(provider string) string { return "platform-" + provider }

// platformCredential selects, from resolver_credentials, the platform key
// of a provider: named $1 (platformCredentialName) with provider $2. A
// credential created by hand with the same name and provider is a later
// one: the oldest is the one SetPlatformKey set.
const platformCredential = `name = $1 AND provider = $2 ORDER BY created_at, id LIMIT 1`

// PlatformKey is a provider and the platform key SetPlatformKey set for
// it, if any.
type PlatformKey struct {
	Provider string `json:"provider"`
	// Dialects are those the registry says the provider speaks; none when
	// the registry no longer has it.
	Dialects []string `json:"dialects"`
	// Credential is the platform key, without its secret; nil when none
	// is set.
	Credential *Credential `json:"credential,omitempty"`
}

// PlatformKeys lists every provider of the registry, in its order, with
// its platform key, then any platform key whose provider the registry no
// longer has, so that one can still be seen and removed.
func (s *Service) PlatformKeys(ctx context.Context) ([]PlatformKey, error) {
	var keys []Credential
	err := s.eachRow(ctx, `SELECT `+credentialColumns+` FROM resolver_credentials WHERE name LIKE 'platform-%' ORDER BY created_at, id`, nil, func(r scanner) error {
		c, err := s.scanCredential(r)
		if err == nil {
			keys = append(keys, c)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list platform keys: %w", err)
	}
	byProvider := map[string]*Credential{}
	var order []string
	for i, c := range keys {
		if _, ok := byProvider[c.Provider]; ok || c.Name != platformCredentialName(c.Provider) {
			continue
		}
		byProvider[c.Provider] = &keys[i]
		order = append(order, c.Provider)
	}
	var out []PlatformKey
	for _, p := range s.reg.Current().Providers() {
		out = append(out, PlatformKey{Provider: p.Name, Dialects: slices.Clone(p.Dialects), Credential: byProvider[p.Name]})
		delete(byProvider, p.Name)
	}
	for _, name := range order {
		if c, ok := byProvider[name]; ok {
			out = append(out, PlatformKey{Provider: name, Credential: c})
		}
	}
	return out, nil
}

// orphanedPlatformBindings lists the platform bindings that name the
// deleted credential id and no credential that still exists.
func orphanedPlatformBindings(ctx context.Context, tx *sql.Tx, id string) ([]BindingKey, error) {
	rows, err := tx.QueryContext(ctx, `SELECT dialect, harness FROM resolver_bindings WHERE tier = 'platform' AND scope_id = '' AND `+orphanedBy, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []BindingKey
	for rows.Next() {
		k := BindingKey{Tier: TierPlatform}
		if err := rows.Scan(&k.Dialect, &k.Harness); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// DeletePlatformKey removes the platform key SetPlatformKey set for
// provider and returns it as it was (without its secret). The credential
// goes as DeleteCredential deletes one, in the same transaction, except
// that a platform binding left with no credential is removed rather than
// deactivated: below the platform tier there is nothing to fall through
// to, so a kept binding would only read "binding-inactive" where the
// truth is "no platform key". A platform binding that still names another
// credential stays and resolves to it. A provider without a platform key
// is ErrCredentialNotFound; when the registry does not know it either,
// an ErrInvalidArgument listing the providers it knows. A platform key
// whose provider left the registry can still be removed.
func (s *Service) DeletePlatformKey(ctx context.Context, provider string) (Credential, error) {
	var c Credential
	// Platform bindings apply to every resolution.
	err := s.write(ctx, change{changeBinding, ""}, func(tx *sql.Tx) error {
		var err error
		c, err = s.scanCredential(tx.QueryRowContext(ctx, `SELECT `+credentialColumns+` FROM resolver_credentials WHERE `+platformCredential,
			platformCredentialName(provider), provider))
		if isNoRows(err) {
			var p argProblems
			if p.checkProvider(s.reg.Current(), provider); p.err() != nil {
				return p.err()
			}
			return fmt.Errorf("provider %q has no platform key: %w", provider, ErrCredentialNotFound)
		}
		if err != nil {
			return err
		}
		if err := s.deleteCredential(ctx, tx, c.ID); err != nil {
			return err
		}
		gone, err := orphanedPlatformBindings(ctx, tx, c.ID)
		if err != nil {
			return err
		}
		for _, k := range gone {
			if _, err := tx.ExecContext(ctx, `DELETE FROM resolver_bindings WHERE tier = $1 AND scope_id = '' AND dialect = $2 AND harness = $3`,
				k.Tier, k.Dialect, k.Harness); err != nil {
				return err
			}
			if err := deleteCandidates(ctx, tx, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Credential{}, fmt.Errorf("delete platform key: %w", err)
	}
	return c, nil
}

// SetPlatformKey stores secret as the platform credential of provider and
// binds it, active, at the platform tier for every dialect the provider
// speaks (dialect-wide). Running it again replaces the secret of the same
// credential. A platform binding another credential held for one of those
// dialects is replaced: the last provider set wins per dialect. A platform
// binding that already names the credential, among others, keeps them
// (and is activated): rotating the key must not drop its failover.
func (s *Service) SetPlatformKey(ctx context.Context, provider string, secret Secret) (Credential, error) {
	c, plain, err := s.prepareCredential(CredentialSpec{Name: platformCredentialName(provider), Provider: provider, Secret: secret})
	if err != nil {
		return Credential{}, fmt.Errorf("set platform key: %w", err)
	}
	p, err := s.reg.Current().Provider(provider)
	if err != nil {
		// The registry was reloaded since prepareCredential read it.
		return Credential{}, fmt.Errorf("set platform key: provider %q: %w", provider, err)
	}
	// Platform bindings apply to every resolution.
	err = s.write(ctx, change{changeBinding, ""}, func(tx *sql.Tx) error {
		var existing string
		err := tx.QueryRowContext(ctx, `SELECT id FROM resolver_credentials WHERE `+platformCredential, c.Name, provider).Scan(&existing)
		switch {
		case isNoRows(err):
			if err := s.insertCredential(ctx, tx, &c, plain); err != nil {
				return err
			}
		case err != nil:
			return err
		default:
			c.ID = existing
			if err := s.updateSecret(ctx, tx, existing, plain); err != nil {
				return err
			}
		}
		for _, d := range p.Dialects {
			k := BindingKey{Tier: TierPlatform, Dialect: d}
			res, err := tx.ExecContext(ctx, `UPDATE resolver_bindings SET active = $1, updated_at = $2
				WHERE tier = $3 AND scope_id = '' AND dialect = $4 AND harness = ''
				AND (credential_id = $5 OR EXISTS (SELECT 1 FROM resolver_binding_candidates a WHERE `+candidatesOfBinding+` AND a.credential_id = $5))`,
				true, s.now(), k.Tier, d, c.ID)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n > 0 {
				continue
			}
			if _, err := s.upsertBinding(ctx, tx, k, []BindCandidate{{CredentialID: c.ID, Weight: 1}}, true); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Credential{}, fmt.Errorf("set platform key: %w", err)
	}
	return s.GetCredential(ctx, c.ID)
}

// checkBindingKey adds every problem with k's shape: its tier and scope id,
// and, when known is set, whether its dialect and harness exist.
func (p *argProblems) checkBindingKey(reg *registry.Registry, k BindingKey, known bool) {
	switch k.Tier {
	case TierProject, TierUser:
		if k.ScopeID == "" {
			p.addf("scope_id is required for tier %s", k.Tier)
		}
	case TierPlatform:
		if k.ScopeID != "" {
			p.addf("scope_id must be empty for tier platform")
		}
	case "":
		p.addf("tier is required (one of project, user, platform)")
	default:
		p.addf("tier %q is not project, user or platform", k.Tier)
	}
	if !known {
		if k.Dialect == "" {
			p.addf("dialect is required")
		}
		return
	}
	if !p.checkDialect(reg, k.Dialect) || k.Harness == "" {
		if k.Harness != "" {
			p.checkHarness(reg, k.Harness)
		}
		return
	}
	if h := p.checkHarness(reg, k.Harness); h != nil && !h.SpeaksDialect(k.Dialect) {
		p.add(fmt.Errorf("harness %q does not speak %q: %w", k.Harness, k.Dialect, ErrDialectMismatch))
	}
}

// BindOptions are Bind's optional settings; the zero value binds active.
type BindOptions struct {
	// Inactive creates (or replaces) the binding deactivated, in the same
	// transaction: no reader, here or on another replica, ever sees it
	// active.
	Inactive bool
}

// Bind places credentialID at k, active unless opts says Inactive,
// replacing the credentials of an existing binding with the same key. It is
// BindCandidates with one candidate.
func (s *Service) Bind(ctx context.Context, k BindingKey, credentialID string, opts ...BindOptions) (Binding, error) {
	return s.BindCandidates(ctx, k, []BindCandidate{{CredentialID: credentialID}}, opts...)
}

// BindCandidates places the credentials cands at k, active unless opts
// says Inactive, replacing every credential of an existing binding with the
// same key. Every credential's provider must speak k.Dialect (providers may
// differ: Anthropic and an Anthropic-compatible endpoint) and the harness,
// if any, must exist and speak it (ErrDialectMismatch): checked here, once,
// not on every request. A credential may appear once. The candidates are
// kept in priority order, ties in the order given; the first is the
// binding's CredentialID. At most one BindOptions is read.
func (s *Service) BindCandidates(ctx context.Context, k BindingKey, cands []BindCandidate, opts ...BindOptions) (Binding, error) {
	var o BindOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	reg := s.reg.Current()
	var p argProblems
	p.checkBindingKey(reg, k, true)
	cands = p.checkCandidates(cands)
	if err := p.err(); err != nil {
		return Binding{}, fmt.Errorf("bind: %w", err)
	}
	var b Binding
	err := s.write(ctx, change{changeBinding, bindingScope(k)}, func(tx *sql.Tx) error {
		for _, c := range cands {
			if err := checkSpeaks(ctx, tx, reg, c.CredentialID, k.Dialect); err != nil {
				return err
			}
		}
		var err error
		b, err = s.upsertBinding(ctx, tx, k, cands, !o.Inactive)
		return err
	})
	if err != nil {
		return Binding{}, fmt.Errorf("bind: %w", err)
	}
	return b, nil
}

// checkCandidates adds every problem with cands and returns them with
// default weights, sorted stably by priority.
func (p *argProblems) checkCandidates(cands []BindCandidate) []BindCandidate {
	switch {
	case len(cands) == 0:
		p.addf("credential_id is required")
		return nil
	case len(cands) > MaxCandidates:
		p.addf("a binding names at most %d credentials, got %d", MaxCandidates, len(cands))
		return nil
	}
	out := slices.Clone(cands)
	seen := map[string]bool{}
	for i := range out {
		c := &out[i]
		name := "credential_id"
		if len(cands) > 1 {
			name = fmt.Sprintf("credentials[%d]", i)
		}
		switch {
		case c.CredentialID == "" && len(cands) == 1:
			p.addf("credential_id is required")
		case c.CredentialID == "":
			p.addf("%s: the credential id is required", name)
		case seen[c.CredentialID]:
			p.addf("%s: credential %s is named twice", name, c.CredentialID)
		}
		seen[c.CredentialID] = true
		if c.Priority < 0 || c.Priority > MaxPriority {
			p.addf("%s: priority %d is not between 0 and %d", name, c.Priority, MaxPriority)
		}
		if c.Weight == 0 {
			c.Weight = 1
		}
		if c.Weight < 1 || c.Weight > MaxWeight {
			p.addf("%s: weight %d is not between 1 and %d", name, c.Weight, MaxWeight)
		}
	}
	slices.SortStableFunc(out, func(x, y BindCandidate) int { return cmp.Compare(x.Priority, y.Priority) })
	return out
}

// checkSpeaks refuses a credential that does not exist or whose provider
// does not speak dialect.
func checkSpeaks(ctx context.Context, tx *sql.Tx, reg *registry.Registry, credentialID, dialect string) error {
	var provider string
	if err := tx.QueryRowContext(ctx, `SELECT provider FROM resolver_credentials WHERE id = $1`, credentialID).Scan(&provider); err != nil {
		if isNoRows(err) {
			return fmt.Errorf("credential %s: %w", credentialID, ErrCredentialNotFound)
		}
		return err
	}
	p, err := reg.Provider(provider)
	if err != nil {
		return fmt.Errorf("credential %s: provider %q: %w", credentialID, provider, err)
	}
	if !p.Speaks(dialect) {
		return fmt.Errorf("provider %q of credential %s does not speak %q: %w", provider, credentialID, dialect, ErrDialectMismatch)
	}
	return nil
}

// candidatesOfBinding joins resolver_binding_candidates a to the
// resolver_bindings row of the statement it is used in.
const candidatesOfBinding = `a.tier = resolver_bindings.tier AND a.scope_id = resolver_bindings.scope_id
	AND a.dialect = resolver_bindings.dialect AND a.harness = resolver_bindings.harness`

// upsertBinding writes the binding at k with cands (checked, in order):
// the first on the binding row, the others, in their order, as candidate
// rows, replacing whatever the key held.
func (s *Service) upsertBinding(ctx context.Context, tx *sql.Tx, k BindingKey, cands []BindCandidate, active bool) (Binding, error) {
	now := s.now()
	first := cands[0]
	b := Binding{BindingKey: k, CredentialID: first.CredentialID, Credentials: cands, Active: active, UpdatedAt: now}
	err := tx.QueryRowContext(ctx, `INSERT INTO resolver_bindings
		(tier, scope_id, dialect, harness, credential_id, priority, weight, active, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (tier, scope_id, dialect, harness) DO UPDATE SET
			credential_id = excluded.credential_id, priority = excluded.priority, weight = excluded.weight,
			active = excluded.active, updated_at = excluded.updated_at
		RETURNING created_at`,
		k.Tier, k.ScopeID, k.Dialect, k.Harness, first.CredentialID, first.Priority, first.Weight, active, now, now).Scan(&b.CreatedAt)
	if err != nil {
		return Binding{}, err
	}
	b.CreatedAt = b.CreatedAt.UTC()
	if err := deleteCandidates(ctx, tx, k); err != nil {
		return Binding{}, err
	}
	for i, c := range cands[1:] {
		_, err := tx.ExecContext(ctx, `INSERT INTO resolver_binding_candidates
			(tier, scope_id, dialect, harness, credential_id, priority, weight, position)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			k.Tier, k.ScopeID, k.Dialect, k.Harness, c.CredentialID, c.Priority, c.Weight, i+1)
		if err != nil {
			return Binding{}, err
		}
	}
	return b, nil
}

func deleteCandidates(ctx context.Context, tx *sql.Tx, k BindingKey) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM resolver_binding_candidates WHERE tier = $1 AND scope_id = $2 AND dialect = $3 AND harness = $4`,
		k.Tier, k.ScopeID, k.Dialect, k.Harness)
	return err
}

// Unbind removes the binding at k, or returns ErrBindingNotFound.
func (s *Service) Unbind(ctx context.Context, k BindingKey) error {
	var p argProblems
	p.checkBindingKey(nil, k, false)
	if err := p.err(); err != nil {
		return fmt.Errorf("unbind: %w", err)
	}
	err := s.write(ctx, change{changeBinding, bindingScope(k)}, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM resolver_bindings WHERE tier = $1 AND scope_id = $2 AND dialect = $3 AND harness = $4`,
			k.Tier, k.ScopeID, k.Dialect, k.Harness)
		if err := mustAffect(res, err, ErrBindingNotFound); err != nil {
			return err
		}
		return deleteCandidates(ctx, tx, k)
	})
	if err != nil {
		return fmt.Errorf("unbind: %w", err)
	}
	return nil
}

// SetBindingActive activates or deactivates the binding at k. An inactive
// project binding halts resolution; an inactive user or platform binding
// is skipped. Activating a binding whose credentials were all deleted
// returns ErrCredentialNotFound.
func (s *Service) SetBindingActive(ctx context.Context, k BindingKey, active bool) error {
	var p argProblems
	p.checkBindingKey(nil, k, false)
	if err := p.err(); err != nil {
		return fmt.Errorf("set binding active: %w", err)
	}
	err := s.write(ctx, change{changeBinding, bindingScope(k)}, func(tx *sql.Tx) error {
		var credID string
		err := tx.QueryRowContext(ctx, `SELECT credential_id FROM resolver_bindings WHERE tier = $1 AND scope_id = $2 AND dialect = $3 AND harness = $4`,
			k.Tier, k.ScopeID, k.Dialect, k.Harness).Scan(&credID)
		if isNoRows(err) {
			return ErrBindingNotFound
		}
		if err != nil {
			return err
		}
		if active {
			var n int
			err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM resolver_credentials WHERE id = $1 OR id IN
				(SELECT credential_id FROM resolver_binding_candidates WHERE tier = $2 AND scope_id = $3 AND dialect = $4 AND harness = $5)`,
				credID, k.Tier, k.ScopeID, k.Dialect, k.Harness).Scan(&n)
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("credential %s: %w", credID, ErrCredentialNotFound)
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE resolver_bindings SET active = $1, updated_at = $2 WHERE tier = $3 AND scope_id = $4 AND dialect = $5 AND harness = $6`,
			active, s.now(), k.Tier, k.ScopeID, k.Dialect, k.Harness)
		return err
	})
	if err != nil {
		return fmt.Errorf("set binding active: %w", err)
	}
	return nil
}

// ListBindings lists bindings matching f, in tier order, each with its
// credentials. f.CredentialID matches a binding that names the credential
// anywhere among its candidates.
func (s *Service) ListBindings(ctx context.Context, f BindingFilter) ([]Binding, error) {
	q := `SELECT tier, scope_id, dialect, harness, credential_id, priority, weight, active, created_at, updated_at FROM resolver_bindings WHERE 1 = 1`
	var args []any
	add := func(col, v string) {
		if v != "" {
			args = append(args, v)
			q += fmt.Sprintf(" AND %s = $%d", col, len(args))
		}
	}
	add("tier", f.Tier)
	add("scope_id", f.ScopeID)
	add("dialect", f.Dialect)
	if f.CredentialID != "" {
		args = append(args, f.CredentialID)
		q += fmt.Sprintf(` AND (credential_id = $%d OR EXISTS (SELECT 1 FROM resolver_binding_candidates a WHERE %s AND a.credential_id = $%d))`,
			len(args), candidatesOfBinding, len(args))
	}
	q += ` ORDER BY CASE tier WHEN 'project' THEN 0 WHEN 'user' THEN 1 ELSE 2 END, scope_id, dialect, harness`
	var out []Binding
	err := s.eachRow(ctx, q, args, func(r scanner) error {
		var b Binding
		var c BindCandidate
		if err := r.Scan(&b.Tier, &b.ScopeID, &b.Dialect, &b.Harness, &b.CredentialID, &c.Priority, &c.Weight, &b.Active, &b.CreatedAt, &b.UpdatedAt); err != nil {
			return err
		}
		c.CredentialID = b.CredentialID
		b.Credentials = []BindCandidate{c}
		b.CreatedAt, b.UpdatedAt = b.CreatedAt.UTC(), b.UpdatedAt.UTC()
		out = append(out, b)
		return nil
	})
	if err == nil && len(out) > 0 {
		err = s.addCandidates(ctx, out)
	}
	if err != nil {
		return nil, fmt.Errorf("list bindings: %w", err)
	}
	return out, nil
}

// addCandidates appends to each of bs its further candidates, read in one
// query (a binding with several credentials is the exception: most read
// nothing), in the order they are tried.
func (s *Service) addCandidates(ctx context.Context, bs []Binding) error {
	idx := make(map[BindingKey]int, len(bs))
	for i, b := range bs {
		idx[b.BindingKey] = i
	}
	err := s.eachRow(ctx, `SELECT tier, scope_id, dialect, harness, credential_id, priority, weight
		FROM resolver_binding_candidates ORDER BY priority, position`, nil, func(r scanner) error {
		var k BindingKey
		var c BindCandidate
		if err := r.Scan(&k.Tier, &k.ScopeID, &k.Dialect, &k.Harness, &c.CredentialID, &c.Priority, &c.Weight); err != nil {
			return err
		}
		if i, ok := idx[k]; ok {
			bs[i].Credentials = append(bs[i].Credentials, c)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The binding row's candidate has the lowest priority, but ties keep
	// it first: it was given first.
	for i := range bs {
		slices.SortStableFunc(bs[i].Credentials, func(x, y BindCandidate) int { return cmp.Compare(x.Priority, y.Priority) })
	}
	return nil
}

// eachRow runs q and calls fn for every row it returns.
func (s *Service) eachRow(ctx context.Context, q string, args []any, fn func(scanner) error) error {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// mustAffect turns "no row changed" into notFound.
func mustAffect(res sql.Result, err error, notFound error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return notFound
	}
	return nil
}
