// Package governance enforces spend and rate policy before a request is
// forwarded: budgets (cost or tokens, reserved before and settled after),
// rate limits (requests, tokens and concurrency per minute, shared through
// Redis) and model policy (allow, deny, alias). It knows nothing of HTTP:
// the proxy asks the Governor to admit a request and renders its Refusal
// in the caller's dialect (../shared/reference/governance.md).
package governance

import (
	"cmp"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	// A calendar window may name any IANA zone, so the binary carries the
	// zone database: a FROM-scratch image has no /usr/share/zoneinfo.
	_ "time/tzdata"
)

// ErrInvalid marks a policy a caller got wrong; its message names the field.
var ErrInvalid = errors.New("invalid policy")

// ErrNotFound is returned for a policy id that does not exist.
var ErrNotFound = errors.New("policy not found")

// invalid returns an ErrInvalid error that lists every problem at once.
func invalid(probs []string) error {
	if len(probs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(probs, "; "))
}

// ScopeType is the level a policy is attached to.
type ScopeType string

const (
	ScopePlatform  ScopeType = "platform"
	ScopeProject   ScopeType = "project"
	ScopeUser      ScopeType = "user"
	ScopeWorkspace ScopeType = "workspace"
	ScopeToken     ScopeType = "token"
)

// ScopeTypes lists the scope types from widest to narrowest.
var ScopeTypes = []ScopeType{ScopePlatform, ScopeProject, ScopeUser, ScopeWorkspace, ScopeToken}

// Scope is who a request is for, from its token.
type Scope struct {
	Project   string
	User      string
	Workspace string
	TokenID   string
	Harness   string
}

// id is sc's identifier at level t ("" for the platform).
func (sc Scope) id(t ScopeType) string {
	switch t {
	case ScopeProject:
		return sc.Project
	case ScopeUser:
		return sc.User
	case ScopeWorkspace:
		return sc.Workspace
	case ScopeToken:
		return sc.TokenID
	}
	return ""
}

// Selector says which requests a policy applies to: every request of its
// scope, optionally narrowed to models matching a glob and to one harness.
type Selector struct {
	ScopeType ScopeType `json:"scope_type"`
	// ScopeID is the project, user, workspace or token id; empty for the
	// platform.
	ScopeID string `json:"scope_id,omitempty"`
	// Model is a glob (path.Match syntax: *, ?, [..]) over the model sent
	// upstream; empty matches every model.
	Model string `json:"model,omitempty"`
	// Harness narrows the policy to one harness; empty matches all.
	Harness string `json:"harness,omitempty"`
}

// Matches reports whether the selector applies to a request of sc for
// model. A policy narrowed to a harness applies to a request whose harness
// is unknown (sc.Harness ""): a token bound to no harness and a
// User-Agent that names none. The harness of such a token is only what
// its User-Agent claims, so a client could otherwise leave a
// harness-narrowed budget or limit by changing that header; it fails
// closed instead. A token bound to a harness is judged by that harness.
func (s Selector) Matches(sc Scope, model string) bool {
	if s.ScopeType != ScopePlatform && (s.ScopeID == "" || sc.id(s.ScopeType) != s.ScopeID) {
		return false
	}
	if s.Harness != "" && sc.Harness != "" && s.Harness != sc.Harness {
		return false
	}
	return s.Model == "" || Glob(s.Model, model)
}

// String names the selector for messages and headers: "project acme",
// "platform", with " model claude-*" when narrowed.
func (s Selector) String() string {
	out := string(s.ScopeType)
	if s.ScopeID != "" {
		out += " " + s.ScopeID
	}
	if s.Model != "" {
		out += " model " + s.Model
	}
	if s.Harness != "" {
		out += " harness " + s.Harness
	}
	return out
}

// problems lists what is wrong with s, naming each field.
func (s Selector) problems() []string {
	var probs []string
	switch s.ScopeType {
	case ScopePlatform:
		if s.ScopeID != "" {
			probs = append(probs, "scope_id must be empty for scope_type platform")
		}
	case ScopeProject, ScopeUser, ScopeWorkspace, ScopeToken:
		if s.ScopeID == "" {
			probs = append(probs, fmt.Sprintf("scope_id is required for scope_type %s", s.ScopeType))
		}
	case "":
		probs = append(probs, "scope_type is required (platform, project, user, workspace or token)")
	default:
		probs = append(probs, fmt.Sprintf("scope_type %q is not one of platform, project, user, workspace, token", s.ScopeType))
	}
	if s.Model != "" {
		if _, err := path.Match(s.Model, ""); err != nil {
			probs = append(probs, fmt.Sprintf("model %q is not a valid glob", s.Model))
		}
	}
	return probs
}

// Glob reports whether model matches pattern (path.Match syntax). A
// malformed pattern matches nothing; patterns are validated when stored.
func Glob(pattern, model string) bool {
	ok, err := path.Match(pattern, model)
	return ok && err == nil
}

// Metric is what a budget counts.
type Metric string

const (
	// MetricCost counts cost in micro-USD.
	MetricCost Metric = "cost"
	// MetricTokens counts tokens: every input bucket plus output.
	MetricTokens Metric = "tokens"
)

// Mode says how a budget admits requests.
type Mode string

const (
	// ModeHard admits a request only if its whole reservation fits, so
	// spend never passes the limit.
	ModeHard Mode = "hard"
	// ModeSoft admits while spent + reserved is under the limit, so spend
	// passes it by at most one request's reservation. The default.
	ModeSoft Mode = "soft"
	// ModeAlert never refuses; it only accounts and notifies.
	ModeAlert Mode = "alert"
)

// WindowKind is a budget's accounting period.
type WindowKind string

const (
	WindowDay      WindowKind = "day"
	WindowWeek     WindowKind = "week" // ISO week, from Monday
	WindowMonth    WindowKind = "month"
	WindowRolling  WindowKind = "rolling"
	WindowLifetime WindowKind = "lifetime"
)

// Window is a budget's period: a calendar day, week or month (in UTC, or
// in the IANA time zone Zone names), a rolling duration, or the whole
// lifetime.
//
// The zone travels inside the window's text, "month@Europe/Berlin", rather
// than as a field of its own: budgets are stored as columns (window_spec),
// not a JSON blob, so the text form round-trips through the store, the
// admin API's JSON, the CLI and alert payloads with no migration, and two
// budgets that differ only in zone are two windows, as day and month are.
type Window struct {
	Kind WindowKind
	// Every is the length of a rolling window.
	Every time.Duration
	// Zone is the IANA name a calendar window's day, week and month start
	// at local midnight in; empty is UTC. Rolling and lifetime windows
	// have none.
	Zone string
}

// zoneSep joins a calendar window and its zone in the window's text.
const zoneSep = "@"

// ParseWindow reads "day", "week", "month", "lifetime" or "rolling:5h"
// (also "5h" alone); a calendar window may name its IANA time zone after
// an @, as in "month@Europe/Berlin".
func ParseWindow(s string) (Window, error) {
	kind, zone, zoned := strings.Cut(s, zoneSep)
	var w Window
	switch k := WindowKind(kind); k {
	case WindowDay, WindowWeek, WindowMonth, WindowLifetime:
		w = Window{Kind: k}
	default:
		d := strings.TrimPrefix(kind, "rolling:")
		every, err := time.ParseDuration(d)
		if err != nil || every < time.Minute || every > 366*24*time.Hour {
			return Window{}, fmt.Errorf("window %q is not day, week, month, lifetime or rolling:<duration> between 1m and 8784h (for example rolling:5h), optionally with a time zone (for example month@Europe/Berlin)", s)
		}
		w = Window{Kind: WindowRolling, Every: every}
	}
	if !zoned {
		return w, nil
	}
	if zone == "" {
		return Window{}, fmt.Errorf("window %q names no time zone after the @ (for example month@Europe/Berlin)", s)
	}
	w, err := w.InZone(zone)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	return w, nil
}

// InZone returns w with its calendar boundaries in the IANA zone tz
// (Europe/Berlin); "" leaves w as it is, and UTC is the default, stored as
// none. It refuses a zone w cannot have: an unknown name, the machine's
// own "Local" (replicas need not share it), a zone for a rolling or
// lifetime window, or a second zone that differs from w's own.
func (w Window) InZone(tz string) (Window, error) {
	if tz == "" {
		return w, nil
	}
	switch w.Kind {
	case WindowRolling:
		return Window{}, fmt.Errorf("time zone %q applies to day, week and month windows only: a rolling window counts back from the present instant, so it has no local midnight to start at", tz)
	case WindowLifetime:
		return Window{}, fmt.Errorf("time zone %q applies to day, week and month windows only: a lifetime window never resets, so it has no local midnight to start at", tz)
	}
	loc, err := zoneLocation(tz)
	if err != nil {
		return Window{}, err
	}
	name := loc.String()
	if name == "UTC" {
		name = ""
	}
	if w.Zone != "" && w.Zone != name {
		return Window{}, fmt.Errorf("time zone %q differs from the window's own, %s", tz, w.Zone)
	}
	w.Zone = name
	return w, nil
}

// zones caches the locations zoneLocation loaded: a budget's window is
// placed on every reservation, and time.LoadLocation reads the zone
// database each call. Only names that loaded are kept, so the cache is at
// most the database's few hundred zones.
var zones sync.Map // name -> *time.Location

// zoneLocation loads the IANA zone name, from the system's database or
// the copy embedded by time/tzdata.
func zoneLocation(name string) (*time.Location, error) {
	if l, ok := zones.Load(name); ok {
		return l.(*time.Location), nil
	}
	if strings.EqualFold(name, "Local") {
		return nil, fmt.Errorf("time zone %q is this machine's own, which other replicas may not share: name the zone (for example Europe/Berlin)", name)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q: not an IANA zone name such as Europe/Berlin or America/New_York", name)
	}
	zones.Store(name, loc)
	return loc, nil
}

// Location is the zone w's calendar boundaries fall in: UTC unless Zone
// names one.
func (w Window) Location() *time.Location {
	if w.Zone == "" {
		return time.UTC
	}
	loc, err := zoneLocation(w.Zone)
	if err != nil {
		// Validate refuses such a window, and the store reads windows
		// through ParseWindow, so only a Window built by hand gets here.
		return time.UTC
	}
	return loc
}

// LocalText renders t in w's zone, "2027-01-01 00:00 Europe/Berlin", to
// show beside the UTC time the CLI and console print everywhere else; ""
// for a window in UTC, whose UTC time says it all.
func (w Window) LocalText(t time.Time) string {
	if w.Zone == "" || t.IsZero() {
		return ""
	}
	return t.In(w.Location()).Format("2006-01-02 15:04") + " " + w.Zone
}

func (w Window) String() string {
	s := string(w.Kind)
	if w.Kind == WindowRolling {
		s = "rolling:" + shortDuration(w.Every)
	}
	if w.Zone != "" {
		s += zoneSep + w.Zone
	}
	return s
}

// shortDuration renders 5h rather than 5h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func (w Window) MarshalText() ([]byte, error) { return []byte(w.String()), nil }

func (w *Window) UnmarshalText(b []byte) error {
	p, err := ParseWindow(string(b))
	if err != nil {
		return err
	}
	*w = p
	return nil
}

// Bounds returns the calendar window holding now: its start and the start
// of the next, at local midnight in w's zone (UTC by default) and
// expressed in that zone. Across a DST change a day is 23 or 25 hours
// long. A rolling window is [now-Every, now) and resets continuously
// (next = now); lifetime starts at the Unix epoch and never resets (next
// is the zero time).
func (w Window) Bounds(now time.Time) (start, next time.Time) {
	loc := w.Location()
	now = now.In(loc)
	y, m, d := now.Date()
	switch w.Kind {
	case WindowDay:
		return midnight(y, m, d, loc), midnight(y, m, d+1, loc)
	case WindowWeek:
		d -= (int(now.Weekday()) + 6) % 7
		return midnight(y, m, d, loc), midnight(y, m, d+7, loc)
	case WindowMonth:
		return midnight(y, m, 1, loc), midnight(y, m+1, 1, loc)
	case WindowRolling:
		return now.Add(-w.Every), now
	}
	return time.Unix(0, 0).UTC(), time.Time{}
}

// midnight is the first instant of the local date y-m-d in loc (time.Date
// normalizes a day out of range). Where a DST change skips midnight
// (America/Santiago springs from 24:00 to 01:00), time.Date may give an
// instant of the day before, in the old offset; the day then starts when
// that offset ends, at 01:00. Day d's start and day d-1's end are the
// same call, so windows tile with no gap or overlap either way.
func midnight(y int, m time.Month, d int, loc *time.Location) time.Time {
	t := time.Date(y, m, d, 0, 0, 0, 0, loc)
	if want := time.Date(y, m, d, 0, 0, 0, 0, time.UTC); t.Day() != want.Day() {
		if _, end := t.ZoneBounds(); !end.IsZero() {
			t = end
		}
	}
	return t
}

// Budget caps cost or tokens of the requests its selector matches over a
// window.
type Budget struct {
	ID string `json:"id"`
	Selector
	Metric Metric `json:"metric"`
	// Limit is in micro-USD for a cost budget, in tokens for a token
	// budget.
	Limit  int64  `json:"limit"`
	Window Window `json:"window"`
	Mode   Mode   `json:"mode"`
	// Unpriced says what a cost budget does with a model the price table
	// does not know: "refuse" (the default; the refusal names the model) or
	// "fallback" (price it at the price table's fallback rates).
	Unpriced string `json:"unpriced,omitempty"`
	// Alerts are the thresholds, in percent of Limit, at which a webhook
	// is sent once per window (default 50, 80, 100).
	Alerts    []int     `json:"alert_thresholds,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// DefaultAlerts are the alert thresholds of a budget that names none.
var DefaultAlerts = []int{50, 80, 100}

// Unpriced policies of a cost budget.
const (
	UnpricedRefuse   = "refuse"
	UnpricedFallback = "fallback"
)

// Normalize fills the defaults: mode soft, unpriced refuse, default alert
// thresholds.
func (b *Budget) Normalize() {
	if w, err := (Window{Kind: b.Window.Kind, Every: b.Window.Every}).InZone(b.Window.Zone); err == nil {
		b.Window = w // Zone "UTC" is stored as none, as ParseWindow reads it
	}
	if b.Mode == "" {
		b.Mode = ModeSoft
	}
	if b.Metric == MetricCost && b.Unpriced == "" {
		b.Unpriced = UnpricedRefuse
	}
	if b.Alerts == nil {
		b.Alerts = append([]int(nil), DefaultAlerts...)
	}
}

// Validate reports every problem with b at once, naming the fields.
func (b Budget) Validate() error {
	probs := b.Selector.problems()
	switch b.Metric {
	case MetricCost, MetricTokens:
	case "":
		probs = append(probs, "metric is required (cost or tokens)")
	default:
		probs = append(probs, fmt.Sprintf("metric %q is not cost or tokens", b.Metric))
	}
	if b.Limit <= 0 {
		probs = append(probs, "limit must be a positive whole number (micro-USD for cost, tokens for tokens)")
	}
	switch b.Window.Kind {
	case WindowDay, WindowWeek, WindowMonth, WindowLifetime, WindowRolling:
		if b.Window.Zone != "" {
			if _, err := (Window{Kind: b.Window.Kind, Every: b.Window.Every}).InZone(b.Window.Zone); err != nil {
				probs = append(probs, "window: "+err.Error())
			}
		}
	default:
		probs = append(probs, "window is required (day, week, month, lifetime or rolling:<duration>)")
	}
	switch b.Mode {
	case ModeHard, ModeSoft, ModeAlert, "":
	default:
		probs = append(probs, fmt.Sprintf("mode %q is not hard, soft or alert", b.Mode))
	}
	switch b.Unpriced {
	case "", UnpricedRefuse, UnpricedFallback:
		if b.Unpriced != "" && b.Metric == MetricTokens {
			probs = append(probs, "unpriced applies to cost budgets only")
		}
	default:
		probs = append(probs, fmt.Sprintf("unpriced %q is not refuse or fallback", b.Unpriced))
	}
	for _, a := range b.Alerts {
		if a <= 0 || a > 1000 {
			probs = append(probs, fmt.Sprintf("alert_thresholds: %d is not a percentage between 1 and 1000", a))
		}
	}
	return invalid(probs)
}

// Limit caps the rate of the requests its selector matches. Zero fields
// are not limited; at least one must be set.
type Limit struct {
	ID string `json:"id"`
	Selector
	// RPM is requests per minute.
	RPM int64 `json:"rpm,omitempty"`
	// TPM is tokens (input + output) per minute: input is reserved from a
	// pacing estimate when admitted and corrected, output charged when the
	// request ends (the bucket may go into debt).
	TPM int64 `json:"tpm,omitempty"`
	// Concurrency is requests in flight at once.
	Concurrency int64 `json:"concurrency,omitempty"`
	// Mode hard refuses (retryably) while the shared limiter is
	// unreachable; soft, the default, falls back to a per-replica limiter
	// at the limit divided by the live replicas.
	Mode      Mode      `json:"mode"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Normalize fills the default mode.
func (l *Limit) Normalize() {
	if l.Mode == "" {
		l.Mode = ModeSoft
	}
}

// Validate reports every problem with l at once, naming the fields.
func (l Limit) Validate() error {
	probs := l.Selector.problems()
	if l.RPM < 0 || l.TPM < 0 || l.Concurrency < 0 {
		probs = append(probs, "rpm, tpm and concurrency must not be negative")
	}
	if l.RPM == 0 && l.TPM == 0 && l.Concurrency == 0 {
		probs = append(probs, "set at least one of rpm, tpm, concurrency")
	}
	switch l.Mode {
	case ModeHard, ModeSoft, "":
	default:
		probs = append(probs, fmt.Sprintf("mode %q is not hard or soft", l.Mode))
	}
	return invalid(probs)
}

// RuleKind is what a model rule does.
type RuleKind string

const (
	// RuleAllow: only models matching some allow rule at this level pass.
	RuleAllow RuleKind = "allow"
	// RuleDeny: models matching are refused.
	RuleDeny RuleKind = "deny"
	// RuleAlias: a request for Pattern (an exact name) is sent as Target.
	RuleAlias RuleKind = "alias"
)

// ModelRule is one allow, deny or alias rule at a scope. Levels intersect:
// a model must pass every level that has rules, so a narrower scope can only
// narrow. Aliases are platform or project rules and apply before the
// allow/deny check, which then judges the target.
type ModelRule struct {
	ID        string    `json:"id"`
	ScopeType ScopeType `json:"scope_type"`
	ScopeID   string    `json:"scope_id,omitempty"`
	Kind      RuleKind  `json:"kind"`
	// Pattern is a glob for allow and deny, the alias name for alias.
	Pattern string `json:"pattern"`
	// Target is the model an alias stands for.
	Target    string    `json:"target,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Validate reports every problem with r at once, naming the fields.
func (r ModelRule) Validate() error {
	probs := Selector{ScopeType: r.ScopeType, ScopeID: r.ScopeID}.problems()
	if r.Pattern == "" {
		probs = append(probs, "pattern is required")
	} else if _, err := path.Match(r.Pattern, ""); err != nil {
		probs = append(probs, fmt.Sprintf("pattern %q is not a valid glob", r.Pattern))
	}
	switch r.Kind {
	case RuleAllow, RuleDeny:
		if r.Target != "" {
			probs = append(probs, "target is only for kind alias")
		}
	case RuleAlias:
		if r.ScopeType != ScopePlatform && r.ScopeType != ScopeProject {
			probs = append(probs, "aliases are platform or project rules")
		}
		if strings.ContainsAny(r.Pattern, "*?[") {
			probs = append(probs, "an alias pattern is an exact model name, not a glob")
		}
		if r.Target == "" {
			probs = append(probs, "target is required for kind alias")
		} else if !modelNameOK(r.Target) {
			probs = append(probs, fmt.Sprintf("target %q is not a model name", r.Target))
		}
	case "":
		probs = append(probs, "kind is required (allow, deny or alias)")
	default:
		probs = append(probs, fmt.Sprintf("kind %q is not allow, deny or alias", r.Kind))
	}
	return invalid(probs)
}

// modelNameOK accepts names that can be written into a JSON string and a
// URL path segment unescaped: letters, digits and . _ - : @ /.
func modelNameOK(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.ContainsRune("._-:@/", c):
		default:
			return false
		}
	}
	return true
}

// Policies is one consistent view of every policy, as loaded from the
// store. It is immutable once published.
type Policies struct {
	// Version increases with every change to any policy.
	Version int64
	Budgets []Budget
	Limits  []Limit
	Rules   []ModelRule
}

// Empty reports whether no policy exists, so a request needs no check at
// all.
func (p *Policies) Empty() bool {
	return p == nil || (len(p.Budgets) == 0 && len(p.Limits) == 0 && len(p.Rules) == 0)
}

// BudgetsFor returns every budget that applies to a request of sc for
// model.
func (p *Policies) BudgetsFor(sc Scope, model string) []Budget {
	if p == nil {
		return nil
	}
	var out []Budget
	for _, b := range p.Budgets {
		if b.Matches(sc, model) {
			out = append(out, b)
		}
	}
	return out
}

// LimitsFor returns every rate limit that applies to a request of sc for
// model.
func (p *Policies) LimitsFor(sc Scope, model string) []Limit {
	if p == nil {
		return nil
	}
	var out []Limit
	for _, l := range p.Limits {
		if l.Matches(sc, model) {
			out = append(out, l)
		}
	}
	return out
}

// RulesFor returns the model rules at every level of sc.
func (p *Policies) RulesFor(sc Scope) []ModelRule {
	if p == nil {
		return nil
	}
	var out []ModelRule
	for _, r := range p.Rules {
		if r.ScopeType == ScopePlatform || (r.ScopeID != "" && sc.id(r.ScopeType) == r.ScopeID) {
			out = append(out, r)
		}
	}
	return out
}

// FormatUSD renders micro-USD as dollars: 1500000 → "$1.50". Amounts under
// a dollar that are not whole cents keep their micro-dollars ("$0.0094",
// "$0.000001"), so a small budget never reads "$0.00 of $0.00".
func FormatUSD(micro int64) string {
	neg := micro < 0
	if neg {
		micro = -micro
	}
	var s string
	if micro < 1_000_000 && micro%10_000 != 0 {
		s = "$0." + strings.TrimRight(fmt.Sprintf("%06d", micro), "0")
	} else {
		cents := (micro + 5000) / 10000
		s = "$" + strconv.FormatInt(cents/100, 10) + "." + fmt.Sprintf("%02d", cents%100)
	}
	if neg {
		s = "-" + s
	}
	return s
}

// ParseUSD reads a dollar amount ("50", "0.25", "$1.50") as micro-USD.
func ParseUSD(s string) (int64, error) {
	t := strings.TrimPrefix(strings.TrimSpace(s), "$")
	whole, frac, _ := strings.Cut(t, ".")
	if whole == "" && frac == "" || len(frac) > 6 || strings.HasPrefix(whole, "-") {
		return 0, fmt.Errorf("%q is not a dollar amount such as 50 or 0.25 (at most 6 decimals)", s)
	}
	w, err := strconv.ParseInt(cmp.Or(whole, "0"), 10, 64)
	if err != nil || w > 1_000_000_000 {
		return 0, fmt.Errorf("%q is not a dollar amount such as 50 or 0.25", s)
	}
	f := int64(0)
	if frac != "" {
		f, err = strconv.ParseInt(frac+strings.Repeat("0", 6-len(frac)), 10, 64)
		if err != nil || f < 0 {
			return 0, fmt.Errorf("%q is not a dollar amount such as 50 or 0.25", s)
		}
	}
	return w*1_000_000 + f, nil
}
