package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tollgate/tollgate/governance"
)

// Governance metrics: each budget's spent, reserved and limit in its
// current window, and whether the shared rate limiter reaches Redis.
// Refusals are counted from the records (metering.MetricGovernanceRefusals).
const (
	// Prometheus: tollgate_governance_budget_{spent,reserved,limit}, in the
	// budget's unit (micro-USD for metric="cost", tokens for "tokens").
	metricBudgetSpent    = "tollgate.governance.budget.spent"
	metricBudgetReserved = "tollgate.governance.budget.reserved"
	metricBudgetLimit    = "tollgate.governance.budget.limit"
	// metricBudgetsUnexported counts the budgets past maxBudgetSeries.
	metricBudgetsUnexported = "tollgate.governance.budgets.unexported"
	// metricRedisUp is 1 while the shared limiter reaches Redis, else 0;
	// only exported when TOLLGATE_REDIS_URL is set.
	metricRedisUp = "tollgate.governance.redis.up"
	// metricAlerts counts webhook deliveries by outcome (Prometheus:
	// tollgate_governance_alerts_total{outcome}); only exported when
	// TOLLGATE_ALERT_WEBHOOK_URL is set.
	metricAlerts = "tollgate.governance.alerts"
)

// maxBudgetSeries bounds the budgets exported per gauge. Budgets are
// created by admins, not clients, but a platform with a budget per token
// could still have many; the rest are counted, not exported.
const maxBudgetSeries = 1000

// budgetRefresh is how often the budget gauges read the ledger: scrapes
// read the last answer, so a scrape interval of a second costs no query.
const budgetRefresh = 15 * time.Second

// headroomReader is what the budget gauges read (*governance.Ledger).
type headroomReader interface {
	Headroom(ctx context.Context, budgets []governance.Budget) ([]governance.Headroom, error)
}

// redisHealth is the shared limiter's state (*governance.RedisLimiter).
type redisHealth interface{ Healthy() bool }

// alertCounts is the alerter's delivery counts (*governance.Alerter).
type alertCounts interface {
	Deliveries() governance.AlertDeliveries
}

// registerGovernance exports the governance gauges on the telemetry's
// meter and refreshes the budget ones from l every budgetRefresh until ctx
// ends. redis is nil when no Redis limiter is configured, alerts when no
// webhook is. The returned function unregisters the callback.
func (t *telemetry) registerGovernance(ctx context.Context, p governance.PolicySource, l headroomReader, redis redisHealth, alerts alertCounts, log *slog.Logger) (unregister func() error, err error) {
	return registerGovernanceOn(ctx, t.provider.Meter(meterName), p, l, redis, alerts, log, budgetRefresh)
}

func registerGovernanceOn(ctx context.Context, meter metric.Meter, p governance.PolicySource, l headroomReader, redis redisHealth, alerts alertCounts, log *slog.Logger, every time.Duration) (func() error, error) {
	if isNil(redis) {
		redis = nil
	}
	if isNil(l) {
		l = nil
	}
	if isNil(alerts) {
		alerts = nil
	}
	var errs [6]error
	var spent, reserved, limit, unexported, redisUp metric.Int64ObservableGauge
	var alertsTotal metric.Int64ObservableCounter
	spent, errs[0] = meter.Int64ObservableGauge(metricBudgetSpent,
		metric.WithDescription("Spent in the budget's current window, in its unit: micro-USD (metric=cost) or tokens (metric=tokens)."))
	reserved, errs[1] = meter.Int64ObservableGauge(metricBudgetReserved,
		metric.WithDescription("Reserved by requests in flight in the budget's current window, in its unit."))
	limit, errs[2] = meter.Int64ObservableGauge(metricBudgetLimit,
		metric.WithDescription("The budget's limit, in its unit."))
	unexported, errs[3] = meter.Int64ObservableGauge(metricBudgetsUnexported,
		metric.WithDescription(fmt.Sprintf("Budgets not exported as series because more than %d exist.", maxBudgetSeries)))
	instruments := []metric.Observable{spent, reserved, limit, unexported}
	if redis != nil {
		redisUp, errs[4] = meter.Int64ObservableGauge(metricRedisUp,
			metric.WithDescription("1 while the shared rate limiter reaches Redis; 0 while it falls back to per-replica limits."))
		instruments = append(instruments, redisUp)
	}
	if alerts != nil {
		alertsTotal, errs[5] = meter.Int64ObservableCounter(metricAlerts,
			metric.WithDescription("Budget alert webhook deliveries by outcome: delivered (2xx), failed (an attempt that was not; retried until the last), dropped (given up, or pruned undelivered)."))
		instruments = append(instruments, alertsTotal)
	}
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("governance instruments: %w", err)
	}
	g := &budgetGauges{p: p, l: l, log: log}
	if l != nil {
		g.refresh(ctx)
		go func() {
			tk := time.NewTicker(every)
			defer tk.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tk.C:
					g.refresh(ctx)
				}
			}
		}()
	}
	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, s := range g.series {
			o.ObserveInt64(spent, s.spent, s.opt)
			o.ObserveInt64(reserved, s.reserved, s.opt)
			o.ObserveInt64(limit, s.limit, s.opt)
		}
		o.ObserveInt64(unexported, int64(g.dropped))
		if redis != nil {
			up := int64(0)
			if redis.Healthy() {
				up = 1
			}
			o.ObserveInt64(redisUp, up)
		}
		if alerts != nil {
			d := alerts.Deliveries()
			o.ObserveInt64(alertsTotal, d.Delivered, outcomeDelivered)
			o.ObserveInt64(alertsTotal, d.Failed, outcomeFailed)
			o.ObserveInt64(alertsTotal, d.Dropped, outcomeDropped)
		}
		return nil
	}, instruments...)
	if err != nil {
		return nil, fmt.Errorf("governance instruments: %w", err)
	}
	return reg.Unregister, nil
}

// The alert outcomes, the only values of the outcome label, built once:
// they are observed on every scrape.
var (
	outcomeDelivered = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "delivered")))
	outcomeFailed    = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "failed")))
	outcomeDropped   = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "dropped")))
)

// budgetGauges holds the last headroom read, as the gauges report it.
type budgetGauges struct {
	p   governance.PolicySource
	l   headroomReader
	log *slog.Logger

	mu      sync.Mutex
	series  []budgetSeries
	dropped int
	failing bool
}

type budgetSeries struct {
	opt                    metric.ObserveOption
	spent, reserved, limit int64
}

func (g *budgetGauges) refresh(ctx context.Context) {
	var budgets []governance.Budget
	if pol := g.p.Current(); pol != nil {
		budgets = pol.Budgets
	}
	dropped := max(0, len(budgets)-maxBudgetSeries)
	budgets = budgets[:len(budgets)-dropped]
	var hs []governance.Headroom
	if len(budgets) > 0 {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		hs, err = g.l.Headroom(rctx, budgets)
		cancel()
		if err != nil {
			// Keep the last values rather than report zeros that read as
			// "nothing spent".
			if !g.failing && ctx.Err() == nil {
				g.log.Warn("governance metrics: reading budget headroom", "err", err)
			}
			g.failing = true
			return
		}
	}
	series := make([]budgetSeries, 0, len(hs))
	for _, h := range hs {
		series = append(series, budgetSeries{
			opt: metric.WithAttributeSet(attribute.NewSet(
				attribute.String("budget_id", h.Budget.ID),
				attribute.String("scope_type", string(h.Budget.ScopeType)),
				attribute.String("metric", string(h.Budget.Metric)))),
			spent: h.Spent, reserved: h.Reserved, limit: h.Limit,
		})
	}
	g.mu.Lock()
	g.series, g.dropped, g.failing = series, dropped, false
	g.mu.Unlock()
}

// isNil reports a nil interface or one holding a nil pointer, so a
// *RedisLimiter variable left nil means "no Redis", not a panic.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}
