package governance

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// SKELETON (h7 owns this file): budget alerts.

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
}

// Alerter sends each budget's threshold alerts once per window across
// replicas, retried with backoff.
type Alerter struct{ cfg AlertConfig }

// NewAlerter applies the alert migrations and returns the Alerter.
func NewAlerter(ctx context.Context, db *store.DB, p PolicySource, l *Ledger, cfg AlertConfig) (*Alerter, error) {
	return &Alerter{cfg: cfg}, nil
}

// Start checks and delivers until ctx ends.
func (a *Alerter) Start(ctx context.Context) error { return nil }
