package governance

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// Budget alerts: a webhook per threshold a budget's spend crosses, once
// per window across every replica. The alert row's primary key is the
// "once": replicas race to insert it and only the one whose insert went in
// sends it; a row its owner left pending (a crash, a failing receiver) is
// claimed by whichever replica sees it due first.

// AlertConfig configures webhook alerts.
type AlertConfig struct {
	// URL receives a POST per threshold crossed (TOLLGATE_ALERT_WEBHOOK_URL);
	// "" disables alerts.
	URL string
	// Secret signs each body: X-Tollgate-Signature: sha256=<hex HMAC>
	// (TOLLGATE_ALERT_WEBHOOK_SECRET).
	Secret   []byte
	Interval time.Duration // how often thresholds are checked (default 5 s)
	Client   *http.Client
	Now      func() time.Time
	Log      *slog.Logger
	// Backoff is the first retry's delay after a failed delivery (default
	// 1 s); each retry doubles it, with jitter, up to MaxBackoff (default
	// 10 min). MaxAttempts deliveries (default 12, about an hour and a
	// half) and the alert is marked failed.
	Backoff, MaxBackoff time.Duration
	MaxAttempts         int
}

// Alert defaults.
const (
	DefaultAlertInterval    = 5 * time.Second
	DefaultAlertBackoff     = time.Second
	DefaultAlertMaxBackoff  = 10 * time.Minute
	DefaultAlertMaxAttempts = 12
	// alertTimeout bounds one delivery, connection to last byte.
	alertTimeout = 10 * time.Second
	// alertClaim is how long a claimed delivery is reserved to its replica:
	// past it, another replica takes the alert over. Well above
	// alertTimeout, so a slow but live sender is never raced.
	alertClaim = time.Minute
	// alertBatch bounds the due alerts one replica claims per check, and
	// alertSenders the deliveries in flight at once.
	alertBatch   = 32
	alertSenders = 4
	// alertRetention is how long the alert rows of a past window are kept
	// (at least two windows of the budget's length): long enough to read
	// back what was sent last month, short enough that the table holds a
	// bounded history rather than every window since the first.
	alertRetention = 35 * 24 * time.Hour
	// alertPruneEvery is how often a replica prunes; alertPruneBatch bounds
	// the rows one pass deletes, so a backlog is worked off a batch per
	// check rather than in one long statement.
	alertPruneEvery = time.Hour
	alertPruneBatch = 1000
)

// Alert states.
const (
	alertPending = "pending"
	alertSent    = "sent"
	alertFailed  = "failed"
)

// alertMigrations are the governance_alerts component's. Times are Unix
// milliseconds except window_start (Unix seconds, the window's identity).
// last_error holds a status or a transport error with the URL reduced to
// scheme, host and path: never the secret, never the query.
var alertMigrations = []string{
	`CREATE TABLE gov_alerts (
	budget_id TEXT NOT NULL,
	window_start BIGINT NOT NULL,
	threshold INTEGER NOT NULL,
	state TEXT NOT NULL,
	attempts INTEGER NOT NULL,
	next_attempt_at BIGINT NOT NULL,
	sent_at BIGINT,
	last_error TEXT NOT NULL,
	payload TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	PRIMARY KEY (budget_id, window_start, threshold)
);
CREATE INDEX gov_alerts_due ON gov_alerts (state, next_attempt_at)`,
}

// headroomReader is what the Alerter needs of the ledger (*Ledger).
type headroomReader interface {
	Headroom(ctx context.Context, budgets []Budget) ([]Headroom, error)
}

// Alerter sends each budget's threshold alerts once per window across
// replicas, retried with backoff.
type Alerter struct {
	cfg    AlertConfig
	db     *store.DB
	p      PolicySource
	l      headroomReader
	target string // the URL without query or user info, for errors and logs

	// known holds the alert keys this replica has seen stored, so a
	// threshold crossed long ago costs no insert per check.
	known map[alertKey]struct{}
	// headroomFailing makes a failing ledger read log once, not per check.
	headroomFailing bool
	// nextPrune is when the next prune pass is due.
	nextPrune time.Time
	// delivered, failed and dropped count deliveries for Deliveries.
	delivered, failed, dropped atomic.Int64
	wg                         sync.WaitGroup
}

// AlertDeliveries counts this replica's webhook deliveries since it
// started: Delivered (the receiver answered 2xx), Failed (an attempt that
// did not, retried or not) and Dropped (an alert given up after its last
// attempt, or pruned before it was ever delivered).
type AlertDeliveries struct {
	Delivered, Failed, Dropped int64
}

// Deliveries returns the delivery counts (tollgate_governance_alerts_total).
func (a *Alerter) Deliveries() AlertDeliveries {
	return AlertDeliveries{Delivered: a.delivered.Load(), Failed: a.failed.Load(), Dropped: a.dropped.Load()}
}

// NewAlerter applies the alert migrations and returns the Alerter.
func NewAlerter(ctx context.Context, db *store.DB, p PolicySource, l *Ledger, cfg AlertConfig) (*Alerter, error) {
	if l == nil {
		if cfg.URL == "" {
			return newAlerter(ctx, db, p, nil, cfg)
		}
		return nil, errors.New("alerts: the budget ledger is required")
	}
	return newAlerter(ctx, db, p, l, cfg)
}

func newAlerter(ctx context.Context, db *store.DB, p PolicySource, l headroomReader, cfg AlertConfig) (*Alerter, error) {
	if err := db.Migrate(ctx, "governance_alerts", alertMigrations); err != nil {
		return nil, fmt.Errorf("alerts: %w", err)
	}
	a := &Alerter{cfg: cfg, db: db, p: p, l: l, known: map[alertKey]struct{}{}}
	if cfg.URL != "" {
		target, err := checkWebhookURL(cfg.URL)
		if err != nil {
			return nil, err
		}
		if len(cfg.Secret) == 0 {
			// An unsigned alert could be forged by anyone who can reach the
			// receiver; refuse rather than send it.
			return nil, errors.New("alerts: TOLLGATE_ALERT_WEBHOOK_SECRET is required with TOLLGATE_ALERT_WEBHOOK_URL")
		}
		a.target = target
	}
	if a.cfg.Interval <= 0 {
		a.cfg.Interval = DefaultAlertInterval
	}
	if a.cfg.Backoff <= 0 {
		a.cfg.Backoff = DefaultAlertBackoff
	}
	if a.cfg.MaxBackoff <= 0 {
		a.cfg.MaxBackoff = DefaultAlertMaxBackoff
	}
	if a.cfg.MaxAttempts <= 0 {
		a.cfg.MaxAttempts = DefaultAlertMaxAttempts
	}
	if a.cfg.Now == nil {
		a.cfg.Now = time.Now
	}
	if a.cfg.Log == nil {
		a.cfg.Log = slog.Default()
	}
	a.cfg.Client = webhookClient(cfg.Client)
	return a, nil
}

// checkWebhookURL accepts an absolute http or https URL with a host and
// returns it reduced to scheme, host and path, which is what logs and
// stored errors may show.
func checkWebhookURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", errors.New("alerts: TOLLGATE_ALERT_WEBHOOK_URL is not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("alerts: TOLLGATE_ALERT_WEBHOOK_URL must be http:// or https://, not %q", u.Scheme)
	}
	if u.Host == "" {
		return "", errors.New("alerts: TOLLGATE_ALERT_WEBHOOK_URL has no host")
	}
	return redactURL(u), nil
}

func redactURL(u *url.URL) string {
	return u.Scheme + "://" + u.Host + u.Path
}

// webhookClient is c (or a new client) with a total timeout and a redirect
// policy that stays on the configured host: a receiver that redirects
// elsewhere would otherwise carry the signed body to a third party.
func webhookClient(c *http.Client) *http.Client {
	var out http.Client
	if c != nil {
		out = *c
	}
	if out.Timeout <= 0 {
		out.Timeout = alertTimeout
	}
	out.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 3 {
			return http.ErrUseLastResponse
		}
		if req.URL.Scheme != via[0].URL.Scheme || req.URL.Host != via[0].URL.Host {
			return http.ErrUseLastResponse
		}
		return nil
	}
	return &out
}

// Start checks thresholds and delivers alerts every Interval in a
// goroutine until ctx ends; Wait waits for it. Without a URL it does
// nothing.
func (a *Alerter) Start(ctx context.Context) error {
	if a.cfg.URL == "" {
		return nil
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(a.cfg.Interval)
		defer t.Stop()
		for {
			a.tick(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// Wait returns once the goroutine Start began has ended.
func (a *Alerter) Wait() { a.wg.Wait() }

// alertKey is an alert's identity: its primary key.
type alertKey struct {
	budget    string
	window    int64 // Unix seconds
	threshold int
}

// delivery is X-Tollgate-Delivery: the key, which a receiver uses to drop
// a repeated delivery.
func (k alertKey) delivery() string {
	return k.budget + ":" + strconv.FormatInt(k.window, 10) + ":" + strconv.Itoa(k.threshold)
}

// alertBudget is the budget as the webhook describes it.
type alertBudget struct {
	ID        string    `json:"id"`
	ScopeType ScopeType `json:"scope_type"`
	ScopeID   string    `json:"scope_id,omitempty"`
	Model     string    `json:"model,omitempty"`
	Harness   string    `json:"harness,omitempty"`
	Metric    Metric    `json:"metric"`
	Limit     int64     `json:"limit"`
	Window    Window    `json:"window"`
	Mode      Mode      `json:"mode"`
}

// alertPayload is the webhook body; SentAt is filled at each delivery.
type alertPayload struct {
	Budget      alertBudget `json:"budget"`
	WindowStart time.Time   `json:"window_start"`
	ResetAt     *time.Time  `json:"reset_at,omitempty"`
	Threshold   int         `json:"threshold_percent"`
	Spent       int64       `json:"spent"`
	Reserved    int64       `json:"reserved"`
	Limit       int64       `json:"limit"`
	SpentUSD    string      `json:"spent_usd,omitempty"`
	LimitUSD    string      `json:"limit_usd,omitempty"`
	SentAt      time.Time   `json:"sent_at"`
}

// tick is one check: store the alerts of thresholds newly crossed, send
// those this replica stored, then claim and send any that are due.
func (a *Alerter) tick(ctx context.Context) {
	var owned []claimed
	if a.l != nil && a.p != nil {
		owned = a.check(ctx)
	}
	due, err := a.claimDue(ctx)
	if err != nil {
		a.cfg.Log.Warn("alerts: claiming due alerts", "err", err)
	}
	a.sendAll(ctx, append(owned, due...))
	if now := a.cfg.Now(); !now.Before(a.nextPrune) {
		n, err := a.prune(ctx, now)
		switch {
		case err != nil:
			a.cfg.Log.Warn("alerts: pruning old alerts", "err", err)
			a.nextPrune = now.Add(alertPruneEvery)
		case n < alertPruneBatch:
			a.nextPrune = now.Add(alertPruneEvery)
		}
		// A full batch leaves nextPrune due: the next check goes on.
	}
}

// prune deletes up to alertPruneBatch alert rows no check can need again:
// those of windows that started more than alertRetention (or two of the
// budget's windows, if longer) before its current one, and those of
// deleted budgets stored more than alertRetention ago. A lifetime budget's
// rows are its only window's, kept while it exists. Which budgets exist
// comes from the policy snapshot: one never loaded (version 0, nothing
// written yet) prunes nothing. It returns the rows deleted; a deleted row
// that was still pending counts as dropped.
func (a *Alerter) prune(ctx context.Context, now time.Time) (int, error) {
	if a.p == nil {
		return 0, nil
	}
	pol := a.p.Current()
	if pol == nil || pol.Version == 0 {
		return 0, nil
	}
	budgets := make(map[string]Budget, len(pol.Budgets))
	for _, b := range pol.Budgets {
		budgets[b.ID] = b
	}
	rows, err := a.db.QueryContext(ctx, `SELECT budget_id, MIN(window_start), MIN(created_at) FROM gov_alerts GROUP BY budget_id`)
	if err != nil {
		return 0, err
	}
	type cut struct {
		budget, col string
		before      int64
	}
	var cuts []cut
	for rows.Next() {
		var id string
		var oldestWindow, oldestCreated int64
		if err := rows.Scan(&id, &oldestWindow, &oldestCreated); err != nil {
			rows.Close()
			return 0, err
		}
		if b, ok := budgets[id]; ok {
			if before, ok := alertCutoff(b, now); ok && oldestWindow < before {
				cuts = append(cuts, cut{id, "window_start", before})
			}
		} else if before := now.Add(-alertRetention).UnixMilli(); oldestCreated < before {
			cuts = append(cuts, cut{id, "created_at", before})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	deleted := 0
	for _, c := range cuts {
		if deleted >= alertPruneBatch {
			break
		}
		rows, err := a.db.QueryContext(ctx, `DELETE FROM gov_alerts WHERE (budget_id, window_start, threshold) IN (
		SELECT budget_id, window_start, threshold FROM gov_alerts WHERE budget_id = $1 AND `+c.col+` < $2
		LIMIT `+strconv.Itoa(alertPruneBatch-deleted)+`)
	RETURNING state`, c.budget, c.before)
		if err != nil {
			return deleted, err
		}
		for rows.Next() {
			var state string
			if err := rows.Scan(&state); err != nil {
				rows.Close()
				return deleted, err
			}
			deleted++
			if state == alertPending {
				a.dropped.Add(1)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}

// alertCutoff is the window key (Unix seconds, as windowKey stores it)
// below which b's alert rows are pruned at now; false for a lifetime
// budget, whose one window never ends.
func alertCutoff(b Budget, now time.Time) (int64, bool) {
	if b.Window.Kind == WindowLifetime {
		return 0, false
	}
	// In the window's zone, so two months back is a local month start
	// (Berlin's October starts at 22:00 UTC, its December at 23:00).
	start := time.Unix(windowKey(Headroom{Budget: b, WindowStart: windowOf(b, now).start}), 0).In(b.Window.Location())
	before := start.Add(-alertRetention)
	switch b.Window.Kind {
	case WindowMonth:
		if two := start.AddDate(0, -2, 0); two.Before(before) {
			before = two
		}
	case WindowRolling:
		if two := start.Add(-2 * b.Window.Every); two.Before(before) {
			before = two
		}
	}
	return before.Unix(), true
}

// check stores an alert row per threshold crossed in each budget's current
// window and returns the rows whose insert this replica won.
func (a *Alerter) check(ctx context.Context) []claimed {
	pol := a.p.Current()
	if pol == nil || len(pol.Budgets) == 0 {
		clear(a.known)
		return nil
	}
	hs, err := a.l.Headroom(ctx, pol.Budgets)
	if err != nil {
		if !a.headroomFailing {
			a.cfg.Log.Warn("alerts: reading budget headroom; alerts wait until it can be read", "err", err)
		}
		a.headroomFailing = true
		return nil
	}
	a.headroomFailing = false
	now := a.cfg.Now()
	seen := map[alertKey]struct{}{}
	var owned []claimed
	for _, h := range hs {
		thresholds := h.Budget.Alerts
		if thresholds == nil {
			thresholds = DefaultAlerts
		}
		for _, t := range thresholds {
			if !crossed(h.Spent, h.Limit, t) {
				continue
			}
			k := alertKey{budget: h.Budget.ID, window: windowKey(h), threshold: t}
			seen[k] = struct{}{}
			if _, ok := a.known[k]; ok {
				continue
			}
			c, won, err := a.insert(ctx, k, h, now)
			if err != nil {
				a.cfg.Log.Warn("alerts: storing an alert", "budget", k.budget, "threshold", t, "err", err)
				continue
			}
			if won {
				owned = append(owned, c)
			}
		}
	}
	for k := range seen {
		a.known[k] = struct{}{}
	}
	// Forget keys no longer crossed (a new window, a raised limit, a
	// deleted budget) so the map stays as small as the live alerts.
	for k := range a.known {
		if _, ok := seen[k]; !ok {
			delete(a.known, k)
		}
	}
	return owned
}

// crossed reports spent*100 >= limit*t without overflow: spent reaches
// ceil(limit*t/100).
func crossed(spent, limit int64, t int) bool {
	if limit <= 0 || t <= 0 {
		return false
	}
	need := limit/100*int64(t) + (limit%100*int64(t)+99)/100
	return spent >= need
}

// windowKey is the window's identity in Unix seconds. A rolling window
// starts anew every instant, so it is keyed by the window length's slot
// it starts in: a rolling budget alerts at most once per window length
// per threshold.
func windowKey(h Headroom) int64 {
	s := h.WindowStart.Unix()
	if h.Budget.Window.Kind == WindowRolling && h.Budget.Window.Every >= time.Second {
		every := int64(h.Budget.Window.Every / time.Second)
		s -= ((s % every) + every) % every
	}
	return s
}

// claimed is an alert row this replica holds the right to send.
type claimed struct {
	key      alertKey
	attempts int
	payload  []byte
}

// insert stores k's alert, pending and already claimed by this replica;
// won is false when another replica (or an earlier check) stored it first.
func (a *Alerter) insert(ctx context.Context, k alertKey, h Headroom, now time.Time) (claimed, bool, error) {
	b := h.Budget
	p := alertPayload{
		Budget: alertBudget{ID: b.ID, ScopeType: b.ScopeType, ScopeID: b.ScopeID, Model: b.Model, Harness: b.Harness,
			Metric: b.Metric, Limit: b.Limit, Window: b.Window, Mode: b.Mode},
		WindowStart: h.WindowStart.UTC(), Threshold: k.threshold, Spent: h.Spent, Reserved: h.Reserved, Limit: h.Limit,
	}
	if !h.ResetAt.IsZero() {
		r := h.ResetAt.UTC()
		p.ResetAt = &r
	}
	if b.Metric == MetricCost {
		p.SpentUSD = strings.TrimPrefix(FormatUSD(h.Spent), "$")
		p.LimitUSD = strings.TrimPrefix(FormatUSD(h.Limit), "$")
	}
	payload, err := json.Marshal(p)
	if err != nil {
		return claimed{}, false, err
	}
	res, err := a.db.ExecContext(ctx, `INSERT INTO gov_alerts
	(budget_id, window_start, threshold, state, attempts, next_attempt_at, last_error, payload, created_at)
	VALUES ($1, $2, $3, $4, 1, $5, '', $6, $7)
	ON CONFLICT (budget_id, window_start, threshold) DO NOTHING`,
		k.budget, k.window, k.threshold, alertPending, now.Add(alertClaim).UnixMilli(), string(payload), now.UnixMilli())
	if err != nil {
		return claimed{}, false, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return claimed{}, false, err
	}
	return claimed{key: k, attempts: 1, payload: payload}, n == 1, nil
}

// claimDue claims the pending alerts whose next attempt is due (a retry,
// or a row a crashed replica left behind), moving their next attempt past
// alertClaim so no other replica sends them meanwhile. On PostgreSQL, SKIP
// LOCKED lets replicas claim disjoint rows without waiting on each other;
// SQLite runs one writer at a time anyway.
func (a *Alerter) claimDue(ctx context.Context) ([]claimed, error) {
	if a.cfg.URL == "" {
		return nil, nil
	}
	now := a.cfg.Now()
	lock := ""
	if a.db.Engine == store.Postgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	rows, err := a.db.QueryContext(ctx, `UPDATE gov_alerts SET attempts = attempts + 1, next_attempt_at = $1
	WHERE (budget_id, window_start, threshold) IN (
		SELECT budget_id, window_start, threshold FROM gov_alerts
		WHERE state = $2 AND next_attempt_at <= $3
		ORDER BY next_attempt_at LIMIT `+strconv.Itoa(alertBatch)+lock+`)
	RETURNING budget_id, window_start, threshold, attempts, payload`,
		now.Add(alertClaim).UnixMilli(), alertPending, now.UnixMilli())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []claimed
	for rows.Next() {
		var c claimed
		var payload string
		if err := rows.Scan(&c.key.budget, &c.key.window, &c.key.threshold, &c.attempts, &payload); err != nil {
			return nil, err
		}
		c.payload = []byte(payload)
		out = append(out, c)
	}
	return out, rows.Err()
}

// sendAll delivers cs and records each outcome: budgets a few at a time,
// each budget's alerts in threshold order, so a receiver sees 50 % before
// 80 % when both were crossed at once.
func (a *Alerter) sendAll(ctx context.Context, cs []claimed) {
	if len(cs) == 0 || a.cfg.URL == "" {
		return
	}
	slices.SortFunc(cs, func(x, y claimed) int {
		return cmp.Or(strings.Compare(x.key.budget, y.key.budget), cmp.Compare(x.key.window, y.key.window), cmp.Compare(x.key.threshold, y.key.threshold))
	})
	sem := make(chan struct{}, alertSenders)
	var wg sync.WaitGroup
	for i := 0; i < len(cs); {
		j := i + 1
		for j < len(cs) && cs[j].key.budget == cs[i].key.budget {
			j++
		}
		group := cs[i:j]
		i = j
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			for _, c := range group {
				a.finish(ctx, c, a.send(ctx, c))
			}
		}()
	}
	wg.Wait()
}

// send POSTs c's payload, stamped with the time sent and signed.
func (a *Alerter) send(ctx context.Context, c claimed) error {
	var p alertPayload
	if err := json.Unmarshal(c.payload, &p); err != nil {
		return fmt.Errorf("stored payload: %w", err)
	}
	now := a.cfg.Now()
	p.SentAt = now.UTC()
	body, err := json.Marshal(p)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return errors.New("building the request failed")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tollgate-alerts")
	req.Header.Set("X-Tollgate-Signature", Sign(a.cfg.Secret, body))
	req.Header.Set("X-Tollgate-Timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("X-Tollgate-Delivery", c.key.delivery())
	resp, err := a.cfg.Client.Do(req)
	if err != nil {
		return a.transportError(err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("POST %s: receiver answered %d", a.target, resp.StatusCode)
	}
	return nil
}

// transportError describes err without the URL's query or user info,
// which *url.Error would print in full.
func (a *Alerter) transportError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("POST %s: %v", a.target, err)
}

// Sign returns the X-Tollgate-Signature of body: "sha256=" and the hex
// HMAC-SHA256 of the exact bytes under secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// finish records a delivery's outcome: sent; pending again after a
// backoff; or, after MaxAttempts, failed.
func (a *Alerter) finish(ctx context.Context, c claimed, sendErr error) {
	now := a.cfg.Now()
	log := a.cfg.Log.With("budget", c.key.budget, "threshold", c.key.threshold, "delivery", c.key.delivery(), "attempt", c.attempts)
	var err error
	switch {
	case sendErr == nil:
		a.delivered.Add(1)
		_, err = a.db.ExecContext(ctx, `UPDATE gov_alerts SET state = $1, sent_at = $2, last_error = ''
		WHERE budget_id = $3 AND window_start = $4 AND threshold = $5 AND state = $6`,
			alertSent, now.UnixMilli(), c.key.budget, c.key.window, c.key.threshold, alertPending)
		log.Info("alert delivered")
	case c.attempts >= a.cfg.MaxAttempts:
		a.failed.Add(1)
		a.dropped.Add(1)
		_, err = a.db.ExecContext(ctx, `UPDATE gov_alerts SET state = $1, last_error = $2
		WHERE budget_id = $3 AND window_start = $4 AND threshold = $5 AND state = $6`,
			alertFailed, truncate(sendErr.Error(), 500), c.key.budget, c.key.window, c.key.threshold, alertPending)
		log.Error("alert not delivered; giving up", "err", sendErr)
	default:
		a.failed.Add(1)
		next := now.Add(a.backoff(c.attempts))
		_, err = a.db.ExecContext(ctx, `UPDATE gov_alerts SET next_attempt_at = $1, last_error = $2
		WHERE budget_id = $3 AND window_start = $4 AND threshold = $5 AND state = $6`,
			next.UnixMilli(), truncate(sendErr.Error(), 500), c.key.budget, c.key.window, c.key.threshold, alertPending)
		log.Warn("alert not delivered; retrying", "err", sendErr, "retry_at", next)
	}
	if err != nil && ctx.Err() == nil {
		// The claim lapses and another check sends it again: a receiver
		// drops the repeat by its X-Tollgate-Delivery.
		log.Warn("alerts: recording a delivery", "err", err)
	}
}

// backoff is the wait after the attempt-th failure: Backoff doubled per
// attempt up to MaxBackoff, then jittered down by up to half so replicas
// and receivers recovering together do not retry in step.
func (a *Alerter) backoff(attempt int) time.Duration {
	d := a.cfg.Backoff
	for i := 1; i < attempt && d < a.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, a.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

var _ headroomReader = (*Ledger)(nil)
