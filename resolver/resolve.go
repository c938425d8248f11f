package resolver

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/registry"
)

// Sources of a Resolution: the tier that pays, or why none does.
const (
	SourceProject    = TierProject
	SourceUser       = TierUser
	SourcePlatform   = TierPlatform
	SourceHalted     = "halted"
	SourceUnresolved = "unresolved"
)

// Reasons a binding was not used. On a halted or unresolved Resolution the
// reason says why nothing pays; on a resolved one it says why a preferred
// binding was skipped (empty when none was).
const (
	// ReasonBindingInactive: the binding is deactivated (or its credential
	// was deleted, which deactivates it).
	ReasonBindingInactive = "binding-inactive"
	// ReasonCredentialDisabled: the credential is disabled, or missing.
	ReasonCredentialDisabled = "credential-disabled"
	// ReasonCredentialUnusable: the credential does not decrypt with the
	// configured master keys, or its base URL is refused at use. Logged
	// once, without the secret.
	ReasonCredentialUnusable = "credential-unusable"
	// ReasonDialectMismatch: the credential's provider no longer speaks the
	// dialect (the registry changed after Bind).
	ReasonDialectMismatch = "dialect-mismatch"
	// ReasonNone: no binding exists at any tier.
	ReasonNone = "none"
)

// Request is what a resolution depends on.
type Request struct {
	// Project is the caller's project; empty skips the project tier.
	Project string
	// User is the caller; empty skips the user tier.
	User string
	// Harness is the calling harness, if known; harness-specific bindings
	// win over dialect-wide ones at each tier.
	Harness string
	// Dialect is the registry dialect of the route. Required.
	Dialect string
}

// Target is the upstream credential a request uses.
type Target struct {
	// Provider is the registry provider name.
	Provider string
	// BaseURL overrides the provider's base URL; empty means the
	// provider's own.
	BaseURL string
	// Secret is the key to inject.
	Secret Secret
	// Tier is TierProject, TierUser or TierPlatform.
	Tier string
	// CredentialID names the credential, for usage records.
	CredentialID string
	// Alternates are the binding's further candidates for failover, in
	// the order to try them (priority, then a weighted draw per call);
	// empty when the binding names one credential. Their own Alternates
	// are empty. The slice may be shared with the resolver's cache: read
	// it, never write to it.
	Alternates []Target
}

// Resolution explains how one (harness, dialect) resolves for a project
// and user: the row of the resolution-status view.
type Resolution struct {
	// Harness is empty on a dialect-wide row.
	Harness string `json:"harness"`
	Dialect string `json:"dialect"`
	// Source is SourceProject, SourceUser, SourcePlatform, SourceHalted or
	// SourceUnresolved.
	Source string `json:"source"`
	// CredentialID and Provider name the credential that pays or, on a
	// halted row, the one that halted.
	CredentialID string `json:"credential_id,omitempty"`
	Provider     string `json:"provider,omitempty"`
	// Reason is one of the Reason constants, or empty.
	Reason string `json:"reason,omitempty"`
	// Candidates are every credential the binding names, in priority
	// order (ties in the order given), usable or not; CredentialID above is
	// the first usable one. On an unresolved row they are those of the
	// skipped binding Reason speaks of. Empty on rows without a binding.
	Candidates []Candidate `json:"candidates,omitempty"`
}

// Candidate is one credential of a binding, as the resolution view shows it.
type Candidate struct {
	CredentialID string `json:"credential_id"`
	Provider     string `json:"provider"`
	Priority     int    `json:"priority"`
	Weight       int    `json:"weight"`
	// Usable is false when the credential is disabled, missing or
	// unusable, or the binding inactive; Reason says which.
	Usable bool   `json:"usable"`
	Reason string `json:"reason,omitempty"`
	// Health is the credential's health as the proxy last saw it, filled
	// by the caller that owns the health tracker; nil when unknown.
	Health any `json:"health,omitempty"`
}

// ResolveError is the error of a resolution that found no credential. It
// wraps ErrHalted or ErrNoCredential.
type ResolveError struct {
	Dialect string
	// Source is SourceHalted or SourceUnresolved.
	Source string
	// Reason is one of the Reason constants.
	Reason string
	// Err is ErrHalted or ErrNoCredential.
	Err error
	// Cause says why a credential is unusable when Reason is
	// ReasonCredentialUnusable: ErrHTTPBaseURL or ErrUndecryptable. The
	// fix differs, so a caller can say which.
	Cause error
}

func (e *ResolveError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("resolve %s: %s (%s: %s)", e.Dialect, e.Err, e.Reason, e.Cause)
	}
	return fmt.Sprintf("resolve %s: %s (%s)", e.Dialect, e.Err, e.Reason)
}

// Unwrap returns ErrHalted or ErrNoCredential, and Cause if set.
func (e *ResolveError) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Err, e.Cause}
	}
	return []error{e.Err}
}

// resolveKey is comparable, so a cache hit hashes four strings and
// allocates nothing.
type resolveKey struct {
	project, user, harness, dialect string
}

// resolveEntry is one computed resolution. It is immutable once cached,
// but for refreshing, set while a background refresh of it runs
// (dueForRefresh).
type resolveEntry struct {
	refreshing atomic.Bool
	gen        uint64
	reg        *registry.Registry // the registry it was computed under
	until      time.Time
	res        Resolution
	// target is the answer in the binding's listed order: its first usable
	// candidate, the others as Alternates (shared, read-only).
	target Target
	// When a priority holds several usable candidates, each call draws
	// their order (drawTarget): usable are every usable candidate, in
	// priority order, with their weights and the end index of each priority
	// group. Unset for the single-candidate bindings, whose hot path stays
	// a cache hit and nothing else.
	weighted bool
	usable   []Target
	weights  []int
	groupEnd []int
	err      error
	// creds are the credentials of every binding considered, the skipped
	// ones included: a change to any of them can change the answer.
	creds []string
}

func (e *resolveEntry) considered(credID string) bool {
	for _, c := range e.creds {
		if c == credID {
			return true
		}
	}
	return false
}

// Resolve picks the credential that pays for req:
//
//   - project tier, harness-specific binding before dialect-wide: the first
//     one present decides; if it is inactive, or every credential it names
//     is missing, disabled or unusable, resolution halts (ErrHalted) and
//     never falls through;
//   - user tier, same order: an unusable binding is skipped;
//   - platform tier, same order: likewise;
//   - otherwise ErrNoCredential.
//
// A binding that names several credentials is usable while one of them is:
// the Target is its first usable candidate and Alternates the other usable
// ones, in priority order (lowest first). Among candidates of one priority
// each call draws the order, weighted: a candidate of weight w comes first
// in w/Σw of the calls. Unusable candidates are left out (the view says
// why), so a disabled first candidate moves the binding's traffic to its
// next one, never to another tier.
//
// Errors are *ResolveError values wrapping those sentinels, or, while
// Start runs, ErrUnavailable (as for Authenticate). Answers are cached per
// (project, user, harness, dialect): successes for Config.ResolveCacheTTL
// (with Start, until a change names them), failures for
// Config.NegativeTTL, until a write invalidates them. ResolutionView runs
// the same code.
func (s *Service) Resolve(ctx context.Context, req Request) (Target, error) {
	now := s.now()
	e, err := s.lookup(ctx, req, now)
	if err != nil {
		return Target{}, err
	}
	if e.err != nil {
		return Target{}, e.err
	}
	if e.weighted {
		t := e.drawTarget(s.cfg.randN)
		s.usage.markCred(t.CredentialID, now)
		return t, nil
	}
	s.usage.markCred(e.target.CredentialID, now)
	return e.target, nil
}

// drawTarget orders the usable candidates for one call: priority groups in
// order, and within a group a weighted draw without replacement, so a
// candidate of weight w comes first in w/Σw of the calls and the rest of
// the group follows as Alternates, drawn the same way.
func (e *resolveEntry) drawTarget(randN func(uint64) uint64) Target {
	order := make([]Target, len(e.usable))
	copy(order, e.usable)
	var wbuf [MaxCandidates]int
	w := append(wbuf[:0], e.weights...)
	lo := 0
	for _, hi := range e.groupEnd {
		for i := lo; i < hi-1; i++ {
			total := 0
			for _, x := range w[i:hi] {
				total += x
			}
			r := int(randN(uint64(total)))
			j := i
			for r >= w[j] {
				r -= w[j]
				j++
			}
			order[i], order[j] = order[j], order[i]
			w[i], w[j] = w[j], w[i]
		}
		lo = hi
	}
	t := order[0]
	t.Alternates = order[1:]
	return t
}

// lookup is the one resolution path: Resolve and ResolutionView both use
// it, so a request and the status view cannot disagree.
func (s *Service) lookup(ctx context.Context, req Request, now time.Time) (*resolveEntry, error) {
	if err := s.checkFresh(ctx, now); err != nil {
		return nil, fmt.Errorf("resolve %s: %w", req.Dialect, err)
	}
	reg := s.reg.Current()
	k := resolveKey{req.Project, req.User, req.Harness, req.Dialect}
	var stale *resolveEntry
	if e, ok := s.resolved.Get(k); ok && e.reg == reg {
		if now.Before(e.until) {
			if e.err == nil && s.dueForRefresh(e.until, now, &e.refreshing) {
				go s.refreshResolution(e, reg, cloneRequest(req))
			}
			return e, nil
		}
		stale = e
	}
	v, err := s.resolveMiss(ctx, reg, cloneRequest(req), now)
	if err != nil {
		if stale == nil || !s.serveStale(err) {
			return nil, err
		}
		return stale, nil
	}
	return v, nil
}

// cloneRequest copies the caller's strings, which may be views into reused
// buffers (fiber), before they are kept.
func cloneRequest(req Request) Request {
	return Request{strings.Clone(req.Project), strings.Clone(req.User), strings.Clone(req.Harness), strings.Clone(req.Dialect)}
}

// refreshResolution renews a hot entry before its deadline (dueForRefresh).
func (s *Service) refreshResolution(e *resolveEntry, reg *registry.Registry, req Request) {
	if _, err := s.resolveMiss(context.Background(), reg, req, s.now()); err != nil {
		e.refreshing.Store(false)
	}
}

// resolveMiss computes req's resolution from the database, shared with
// every concurrent caller of the same key, and caches it.
func (s *Service) resolveMiss(ctx context.Context, reg *registry.Registry, req Request, now time.Time) (*resolveEntry, error) {
	// The gen is part of the flight's key: a caller that arrives after an
	// invalidation must not join a read that began before it.
	gen := s.resGen.Load()
	flightKey := "res:" + strings.Join([]string{strconv.FormatUint(gen, 10), req.Project, req.User, req.Harness, req.Dialect}, "\x00")
	v, err := s.miss(ctx, flightKey, func(ctx context.Context) (any, error) {
		e, err := s.compute(ctx, reg, req)
		if err != nil {
			return nil, err
		}
		if s.hookBeforeCache != nil {
			s.hookBeforeCache()
		}
		e.gen, e.reg = gen, reg
		if e.err != nil {
			e.until = now.Add(s.cfg.NegativeTTL)
		} else {
			e.until = now.Add(s.positiveTTL(s.cfg.ResolveCacheTTL))
		}
		s.cacheResolution(resolveKey{req.Project, req.User, req.Harness, req.Dialect}, e)
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*resolveEntry), nil
}

// resolveQuery loads every binding that can apply to a request with each
// of its candidates and their credentials, in one round trip: the binding
// row's own credential (position 0), then its further candidates. Project
// and user scope ids are never empty (Bind checks), so an empty Project or
// User matches no row of that tier.
const resolveQuery = `SELECT b.tier, b.harness, b.active, b.credential_id, b.priority, b.weight, 0,
		c.id, c.provider, c.base_url, c.key_id, c.ciphertext, c.disabled
	FROM resolver_bindings b LEFT JOIN resolver_credentials c ON c.id = b.credential_id
	WHERE ` + resolveWhere + `
	UNION ALL
	SELECT b.tier, b.harness, b.active, a.credential_id, a.priority, a.weight, a.position,
		c.id, c.provider, c.base_url, c.key_id, c.ciphertext, c.disabled
	FROM resolver_bindings b
		JOIN resolver_binding_candidates a ON a.tier = b.tier AND a.scope_id = b.scope_id AND a.dialect = b.dialect AND a.harness = b.harness
		LEFT JOIN resolver_credentials c ON c.id = a.credential_id
	WHERE ` + resolveWhere

const resolveWhere = `b.dialect = $1 AND (b.harness = $2 OR b.harness = '')
		AND ((b.tier = 'project' AND b.scope_id = $3) OR (b.tier = 'user' AND b.scope_id = $4) OR (b.tier = 'platform' AND b.scope_id = ''))`

// binding is a binding that applies to a request, with its candidates in
// the order they are tried: priority, then the order they were given in.
type binding struct {
	tier, harness string
	active        bool
	cands         []*candidate
}

// candidate is one credential of a binding.
type candidate struct {
	credID                     string
	priority, weight, position int
	credFound                  bool
	provider, baseURL          string
	keyID, ciphertext          string
	disabled                   bool
}

func (s *Service) compute(ctx context.Context, reg *registry.Registry, req Request) (*resolveEntry, error) {
	if _, err := reg.Dialect(req.Dialect); err != nil {
		return nil, fmt.Errorf("resolve %q: %w", req.Dialect, err)
	}
	rows, err := s.stmtResolve.QueryContext(ctx,
		req.Dialect, req.Harness, req.Project, req.User)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", req.Dialect, err)
	}
	defer rows.Close()
	// slots: [tier][0 harness-specific, 1 dialect-wide]
	var slots [3][2]*binding
	for rows.Next() {
		var tier, harness string
		var active bool
		c := &candidate{}
		var id, provider, baseURL, keyID, ct sql.NullString
		var disabled sql.NullBool
		if err := rows.Scan(&tier, &harness, &active, &c.credID, &c.priority, &c.weight, &c.position,
			&id, &provider, &baseURL, &keyID, &ct, &disabled); err != nil {
			return nil, fmt.Errorf("resolve %s: %w", req.Dialect, err)
		}
		c.credFound = id.Valid
		c.provider, c.baseURL, c.keyID, c.ciphertext, c.disabled = provider.String, baseURL.String, keyID.String, ct.String, disabled.Bool
		t := tierIndex(tier)
		if t < 0 {
			continue
		}
		w := 1
		if harness != "" {
			w = 0
		}
		if slots[t][w] == nil {
			slots[t][w] = &binding{tier: tier, harness: harness, active: active}
		}
		slots[t][w].cands = append(slots[t][w].cands, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("resolve %s: %w", req.Dialect, err)
	}

	e := &resolveEntry{res: Resolution{Harness: req.Harness, Dialect: req.Dialect}}
	for _, slot := range slots {
		for _, b := range slot {
			if b == nil {
				continue
			}
			slices.SortFunc(b.cands, func(x, y *candidate) int {
				return cmp.Or(cmp.Compare(x.priority, y.priority), cmp.Compare(x.position, y.position))
			})
			for _, c := range b.cands {
				e.creds = append(e.creds, c.credID)
			}
		}
	}
	if b := preferred(slots[0]); b != nil {
		m := s.materialise(reg, req, b)
		if len(m.usable) == 0 {
			first := b.cands[0]
			e.res.Source, e.res.Reason, e.res.CredentialID, e.res.Provider = SourceHalted, m.reason, first.credID, first.provider
			e.res.Candidates = m.view
			e.err = &ResolveError{Dialect: req.Dialect, Source: SourceHalted, Reason: m.reason, Err: ErrHalted, Cause: m.cause}
			return e, nil
		}
		return e.resolved(m, ""), nil
	}
	skipped := ""
	var skippedCause error
	var skippedView []Candidate
	for tier := 1; tier < 3; tier++ {
		for _, b := range slots[tier] {
			if b == nil {
				continue
			}
			m := s.materialise(reg, req, b)
			if len(m.usable) > 0 {
				return e.resolved(m, skipped), nil
			}
			if skipped == "" {
				skipped, skippedCause, skippedView = m.reason, m.cause, m.view
			}
		}
	}
	if skipped == "" {
		skipped = ReasonNone
	}
	e.res.Source, e.res.Reason, e.res.Candidates = SourceUnresolved, skipped, skippedView
	e.err = &ResolveError{Dialect: req.Dialect, Source: SourceUnresolved, Reason: skipped, Err: ErrNoCredential, Cause: skippedCause}
	return e, nil
}

// resolved records m, a binding with at least one usable candidate, as the
// answer: its first usable candidate in listed order, the others as
// Alternates, and, when a priority holds more than one usable candidate,
// what drawTarget needs to order them per call.
func (e *resolveEntry) resolved(m materialised, skipped string) *resolveEntry {
	e.target = m.usable[0]
	if len(m.usable) > 1 {
		e.target.Alternates = m.usable[1:len(m.usable):len(m.usable)]
	}
	for i := 1; i < len(m.usable); i++ {
		if m.priority[i] == m.priority[i-1] {
			e.weighted = true
		}
	}
	if e.weighted {
		e.usable, e.weights = m.usable, m.weight
		for i := 1; i <= len(m.usable); i++ {
			if i == len(m.usable) || m.priority[i] != m.priority[i-1] {
				e.groupEnd = append(e.groupEnd, i)
			}
		}
	}
	t := e.target
	e.res.Source, e.res.CredentialID, e.res.Provider, e.res.Reason = t.Tier, t.CredentialID, t.Provider, skipped
	e.res.Candidates = m.view
	return e
}

func tierIndex(t string) int {
	switch t {
	case TierProject:
		return 0
	case TierUser:
		return 1
	case TierPlatform:
		return 2
	}
	return -1
}

// preferred returns the harness-specific binding if present, else the
// dialect-wide one.
func preferred(slot [2]*binding) *binding {
	if slot[0] != nil {
		return slot[0]
	}
	return slot[1]
}

// materialised is a binding turned into what a request can use.
type materialised struct {
	// usable are the Targets of the usable candidates, in order, with the
	// priority and weight of each.
	usable   []Target
	priority []int
	weight   []int
	// view is every candidate, as the resolution view shows it.
	view []Candidate
	// reason and cause say why the binding cannot be used when usable is
	// empty: an inactive binding, else its first candidate's reason.
	reason string
	cause  error
}

// materialise turns every candidate of an active binding into a Target, or
// says why it cannot. Each usable credential is decrypted here, once per
// cache miss, so a failover costs no decryption; an inactive binding
// decrypts nothing.
func (s *Service) materialise(reg *registry.Registry, req Request, b *binding) materialised {
	var m materialised
	m.view = make([]Candidate, len(b.cands))
	for i, c := range b.cands {
		m.view[i] = Candidate{CredentialID: c.credID, Provider: c.provider, Priority: c.priority, Weight: c.weight}
		if !b.active {
			m.view[i].Reason = ReasonBindingInactive
			continue
		}
		t, reason, cause := s.materialiseOne(reg, req, b.tier, c)
		if reason != "" {
			m.view[i].Reason = reason
			if m.reason == "" {
				m.reason, m.cause = reason, cause
			}
			continue
		}
		m.view[i].Usable = true
		m.usable = append(m.usable, t)
		m.priority = append(m.priority, c.priority)
		m.weight = append(m.weight, max(c.weight, 1))
	}
	if !b.active {
		m.reason = ReasonBindingInactive
	}
	return m
}

// materialiseOne turns a candidate into a Target, or says why it cannot
// (and, for an unusable credential, the sentinel of its cause).
func (s *Service) materialiseOne(reg *registry.Registry, req Request, tier string, c *candidate) (Target, string, error) {
	if !c.credFound || c.disabled {
		return Target{}, ReasonCredentialDisabled, nil
	}
	if p, err := reg.Provider(c.provider); err != nil || !p.Speaks(req.Dialect) {
		return Target{}, ReasonDialectMismatch, nil
	}
	base, err := s.checkBaseURL(c.baseURL)
	if err != nil {
		s.logUnusable(tier, c, "base URL refused at use", err)
		if errors.Is(err, ErrHTTPBaseURL) {
			return Target{}, ReasonCredentialUnusable, ErrHTTPBaseURL
		}
		// Only a database edited by hand gets here.
		return Target{}, ReasonCredentialUnusable, nil
	}
	plain, err := s.keys.Load().open(c.credID, c.keyID, c.ciphertext)
	if err != nil {
		s.logUnusable(tier, c, "credential does not decrypt", err)
		return Target{}, ReasonCredentialUnusable, ErrUndecryptable
	}
	return Target{Provider: c.provider, BaseURL: base, Secret: NewSecret(plain), Tier: tier, CredentialID: c.credID}, "", nil
}

// logUnusable logs a broken credential once per credential, key and
// ciphertext (the GCM tag at its end changes with every encryption), never
// the secret: the errors it is given are fixed strings.
func (s *Service) logUnusable(tier string, c *candidate, msg string, err error) {
	tag := c.ciphertext[max(0, len(c.ciphertext)-16):]
	if _, seen := s.unreadable.LoadOrStore(c.credID+"/"+c.keyID+"/"+tag, struct{}{}); seen {
		return
	}
	s.log.Error(msg+"; it resolves as unusable", "credential_id", c.credID, "key_id", c.keyID, "tier", tier, "err", err)
}

// ResolutionView explains, for project and user, how every harness ×
// dialect of the registry resolves, followed by one dialect-wide row
// (Harness "") per dialect. It runs the same code as Resolve, cache
// included, so it cannot disagree with what a request gets.
func (s *Service) ResolutionView(ctx context.Context, project, user string) ([]Resolution, error) {
	reg := s.reg.Current()
	now := s.now()
	var out []Resolution
	add := func(harness, dialect string) error {
		e, err := s.lookup(ctx, Request{Project: project, User: user, Harness: harness, Dialect: dialect}, now)
		if err != nil {
			return err
		}
		// A copy: the caller fills in Health, and the cached row is shared.
		r := e.res
		r.Candidates = slices.Clone(r.Candidates)
		out = append(out, r)
		return nil
	}
	for _, h := range reg.Harnesses() {
		for _, d := range h.Dialects {
			if err := add(h.Name, d); err != nil {
				return nil, fmt.Errorf("resolution view: %w", err)
			}
		}
	}
	for _, d := range reg.Dialects() {
		if err := add("", d.Name); err != nil {
			return nil, fmt.Errorf("resolution view: %w", err)
		}
	}
	return out, nil
}
