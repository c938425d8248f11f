package ledger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
)

// Group-by dimensions of a usage query.
const (
	GroupDay = "day" // UTC calendar day, YYYY-MM-DD
	// GroupHour is the UTC hour, as 2006-01-02T15:00:00Z. The rollup is
	// daily, so grouping by it reads the raw records whatever the range.
	GroupHour      = "hour"
	GroupModel     = "model"     // served model, else the requested one
	GroupProject   = "project"   // project id
	GroupUser      = "user"      // user id
	GroupWorkspace = "workspace" // workspace id
	GroupHarness   = "harness"   // harness name
	GroupProvider  = "provider"  // provider name
	// GroupServiceTier is the tier the provider says served the request
	// (flex, priority, …), '' when it named none. Whole-day answers also
	// show '' for requests rolled up before the rollup kept the tier
	// (metering migration 3), whatever their records say.
	GroupServiceTier = "service_tier"
	// GroupToken and GroupCredential are the tollgate token id and the
	// provider credential id. The rollup keeps neither, so grouping by them
	// reads the raw records whatever the range.
	GroupToken      = "token"
	GroupCredential = "credential"
	// GroupSession is the harness's session id (Claude Code's session, a
	// Codex conversation): what one agent task cost. Raw records only,
	// like token.
	GroupSession = "session"
)

// GroupByNames lists the valid group-by dimensions in display order.
var GroupByNames = []string{GroupDay, GroupHour, GroupModel, GroupProject, GroupUser, GroupWorkspace, GroupHarness, GroupProvider, GroupServiceTier, GroupToken, GroupCredential, GroupSession}

// ErrInvalidQuery is returned by Query for a malformed UsageQuery (bad
// group_by name, empty or inverted range); the message names the problem.
var ErrInvalidQuery = errors.New("invalid usage query")

// UsageQuery selects usage records whose start is in [From, To), optionally
// filtered, aggregated per combination of the GroupBy dimensions.
type UsageQuery struct {
	// From and To bound the records' start times: From inclusive, To
	// exclusive. Both required. When both are UTC midnights the query is
	// answered from the daily rollup.
	From, To time.Time
	// GroupBy names the dimensions of each row, in column order: a subset
	// of GroupByNames. Empty means one row for the whole range.
	GroupBy []string
	// Project, User and Workspace filter by id, and ServiceTier by tier,
	// when not empty; the '' tier cannot be selected alone.
	Project, User, Workspace, ServiceTier string
	// Session filters by the harness's session id when not empty; the
	// rollup keeps no session, so it is answered from the raw records.
	Session string
	// Harness and Model filter by harness name and by model (served, else
	// requested: the model dimension) when not empty.
	Harness, Model string
}

// UsageRow is one group of a usage query. Dimensions not grouped by are
// empty. Token sums skip requests whose usage is unknown; the counters
// below say how many requests each sum is missing, so an unknown is never
// read as zero.
type UsageRow struct {
	Day       string `json:"day,omitempty"`
	Hour      string `json:"hour,omitempty"`
	Model     string `json:"model,omitempty"`
	Project   string `json:"project,omitempty"`
	User      string `json:"user,omitempty"`
	Workspace string `json:"workspace,omitempty"`
	Harness   string `json:"harness,omitempty"`
	Provider  string `json:"provider,omitempty"`
	// ServiceTier is "" both when not grouped by and for requests served
	// without a named tier; the renderers tell the two apart by GroupBy.
	ServiceTier string `json:"service_tier,omitempty"`
	Token       string `json:"token,omitempty"`
	Credential  string `json:"credential,omitempty"`
	Session     string `json:"session,omitempty"`

	Requests int64 `json:"requests"`
	// Usage sums the token buckets of the requests whose usage is known.
	metering.Usage
	// CostMicroUSD sums the priced requests; nil when none was priced.
	CostMicroUSD *int64 `json:"cost_micro_usd"`
	// PricedRequests have a cost.
	PricedRequests int64 `json:"priced_requests"`
	// UnpricedRequests have tokens but no price: CostMicroUSD leaves them out.
	UnpricedRequests int64 `json:"unpriced_requests"`
	// MissingUsageRequests had no usage and no estimate (usage_source
	// missing): the token sums leave them out.
	MissingUsageRequests int64 `json:"missing_usage_requests"`
	// EstimatedRequests carry tollgate's estimate, not provider numbers.
	EstimatedRequests int64 `json:"estimated_requests"`
	// UnmeteredRequests were not metered calls (usage_source none:
	// rejected, failed upstream, count_tokens); they have no tokens by
	// nature, unlike MissingUsageRequests.
	UnmeteredRequests int64 `json:"unmetered_requests"`
	// RejectedRequests were refused by tollgate before any upstream call;
	// they are a subset of UnmeteredRequests.
	RejectedRequests int64 `json:"rejected_requests"`
}

// dim returns the row's value of a group-by dimension.
func (r *UsageRow) dim(name string) *string {
	switch name {
	case GroupDay:
		return &r.Day
	case GroupHour:
		return &r.Hour
	case GroupModel:
		return &r.Model
	case GroupProject:
		return &r.Project
	case GroupUser:
		return &r.User
	case GroupWorkspace:
		return &r.Workspace
	case GroupHarness:
		return &r.Harness
	case GroupProvider:
		return &r.Provider
	case GroupServiceTier:
		return &r.ServiceTier
	case GroupToken:
		return &r.Token
	case GroupCredential:
		return &r.Credential
	case GroupSession:
		return &r.Session
	}
	return nil
}

// Validate reports every problem of q, each naming its item.
func (q UsageQuery) Validate() error {
	var errs []error
	if q.From.IsZero() || q.To.IsZero() {
		errs = append(errs, fmt.Errorf("%w: from and to are required", ErrInvalidQuery))
	} else if !q.From.Before(q.To) {
		errs = append(errs, fmt.Errorf("%w: from %s is not before to %s", ErrInvalidQuery, q.From.UTC().Format(time.RFC3339), q.To.UTC().Format(time.RFC3339)))
	}
	seen := map[string]bool{}
	for _, g := range q.GroupBy {
		var r UsageRow
		switch {
		case r.dim(g) == nil:
			errs = append(errs, fmt.Errorf("%w: unknown group_by %q (want %s)", ErrInvalidQuery, g, strings.Join(GroupByNames, ", ")))
		case seen[g]:
			errs = append(errs, fmt.Errorf("%w: group_by %q repeated", ErrInvalidQuery, g))
		}
		seen[g] = true
	}
	return errors.Join(errs...)
}

// rollupTable is the rollup that answers q: usage_daily when both bounds
// are UTC midnights and every group-by and filter is one of its columns,
// usage_sessions when the session is also needed, usage_project_models
// when only the day, the project and the model's columns are (the first
// that fits), usage_user_workspaces when only the day, user and workspace
// are, "" (the raw records) otherwise.
func (q UsageQuery) rollupTable() string {
	for _, g := range []string{GroupHour, GroupToken, GroupCredential} {
		if slices.Contains(q.GroupBy, g) {
			return ""
		}
	}
	if !isUTCMidnight(q.From) || !isUTCMidnight(q.To) {
		return ""
	}
	if q.Session != "" || slices.Contains(q.GroupBy, GroupSession) {
		return "usage_sessions"
	}
	if q.fitsModels() {
		return "usage_project_models"
	}
	if q.fitsPeople() {
		return "usage_user_workspaces"
	}
	return "usage_daily"
}

func isUTCMidnight(t time.Time) bool {
	u := t.UTC()
	return u.Hour() == 0 && u.Minute() == 0 && u.Second() == 0 && u.Nanosecond() == 0
}

// Query aggregates usage per q. It reads the daily rollup when the range is
// whole UTC days, else the raw records; both give the same rows. Rows are
// ordered by the group-by columns; groups without requests are omitted.
func (s *Store) Query(ctx context.Context, q UsageQuery) ([]UsageRow, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	return s.query(ctx, q, q.rollupTable())
}

// query builds one aggregate SELECT over a rollup table or, when rollup is
// "", usage_records.
func (s *Store) query(ctx context.Context, q UsageQuery, rollupTable string) ([]UsageRow, error) {
	return s.queryOpt(ctx, q, rollupTable, queryOpt{})
}

// queryOpt are the analytics' additions to a usage query (analytics.go):
// each keeps the rows' sums what Query sums, so totals still agree.
type queryOpt struct {
	// rank > 0 orders the groups by cost, highest first (a group with
	// nothing priced after every priced one), then by tokens (input and
	// output), then by the first dimension in byte order, the same on both
	// engines, and keeps the first rank; *groups gets how many groups there
	// were.
	rank   int
	groups *int
	// inDim, if set, keeps only the records whose inDim is in in.
	inDim string
	in    []string
}

func (s *Store) queryOpt(ctx context.Context, q UsageQuery, rollupTable string, opt queryOpt) ([]UsageRow, error) {
	rollup := rollupTable != ""
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	list := func(vs []string) string {
		ps := make([]string, len(vs))
		for i, v := range vs {
			ps[i] = arg(v)
		}
		return strings.Join(ps, ", ")
	}
	var dims []string
	for _, g := range q.GroupBy {
		dims = append(dims, dimExpr(g, rollup, s.db.Engine))
	}
	var sums []string
	if rollup {
		for _, c := range dailySums {
			sums = append(sums, "CAST(COALESCE(SUM("+c+"), 0) AS BIGINT)")
		}
	} else {
		sums = append(sums, "CAST(COUNT(*) AS BIGINT)")
		for _, b := range metering.Buckets {
			sums = append(sums, "CAST(COALESCE(SUM("+b.Column+"), 0) AS BIGINT)")
		}
		sums = append(sums, "CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT)")
		for _, c := range rollupCounts {
			sums = append(sums, "CAST(COALESCE(SUM(CASE WHEN "+c.raw+" THEN 1 ELSE 0 END), 0) AS BIGINT)")
		}
	}
	var where []string
	var fromDay, toDay string // the day bounds' placeholders on a rollup
	table := "usage_records"
	if rollup {
		table = rollupTable
		fromDay, toDay = arg(q.From.UTC().Format(usageDayLayout)), arg(q.To.UTC().Format(usageDayLayout))
		where = append(where, "day >= "+fromDay, "day < "+toDay)
	} else {
		where = append(where, "started_at >= "+arg(s.ts(q.From)), "started_at < "+arg(s.ts(q.To)))
	}
	for _, f := range []struct{ col, v string }{{"project", q.Project}, {"user_id", q.User}, {"workspace", q.Workspace}, {"service_tier", q.ServiceTier}, {"session_id", q.Session},
		{"harness", q.Harness}, {dimExpr(GroupModel, rollup, s.db.Engine), q.Model}} {
		if f.v != "" {
			where = append(where, f.col+" = "+arg(f.v))
		}
	}
	if opt.inDim != "" {
		if len(opt.in) == 0 {
			where = append(where, "1 = 0")
		} else {
			where = append(where, dimExpr(opt.inDim, rollup, s.db.Engine)+" IN ("+list(opt.in)+")")
		}
	}
	var b strings.Builder
	whereSQL := strings.Join(where, " AND ")
	narrow := opt.rank > 0 && rollup
	if narrow {
		// Rank on the few sums the order reads, then sum every column
		// for the kept groups only (an index lookup per kept session):
		// summing all twenty columns for every session of the range
		// was a quarter of the top sessions' time on SQLite (435 ms of
		// 90 days' 64,000 sessions against 337 ms). The placeholders
		// are numbered, so the repeated filter binds the same values.
		// Rollups only: usage_sessions is indexed by session, the raw
		// records are not (the lookup would scan the range again).
		if len(where) == 2 && opt.inDim == "" && table == "usage_sessions" && q.GroupBy[0] == GroupSession {
			b.WriteString(spanRankCTE(whereSQL, fromDay, toDay, opt.rank, s.db.Engine))
		} else {
			b.WriteString("WITH ranked AS (SELECT " + dims[0] + " AS k, COUNT(*) OVER () AS n FROM " + table + " WHERE " + whereSQL +
				" GROUP BY 1 ORDER BY " + rankOrder(sums, dims[0], s.db.Engine) + " LIMIT " + strconv.Itoa(opt.rank) + ") ")
		}
		whereSQL += " AND " + dims[0] + " IN (SELECT k FROM ranked)"
	}
	b.WriteString("SELECT ")
	b.WriteString(strings.Join(append(dims[:len(dims):len(dims)], sums...), ", "))
	switch {
	case narrow:
		b.WriteString(", (SELECT MAX(n) FROM ranked)")
	case opt.rank > 0:
		b.WriteString(", COUNT(*) OVER ()")
	}
	b.WriteString(" FROM " + table + " WHERE " + whereSQL)
	if len(dims) > 0 {
		var pos []string
		for i := range dims {
			pos = append(pos, strconv.Itoa(i+1))
		}
		// Group and order by position: the model expression is long, and
		// both engines accept ordinal GROUP BY.
		b.WriteString(" GROUP BY " + strings.Join(pos, ", "))
		if opt.rank > 0 {
			b.WriteString(" ORDER BY " + rankOrder(sums, dims[0], s.db.Engine) + " LIMIT " + strconv.Itoa(opt.rank))
		} else {
			b.WriteString(" ORDER BY " + strings.Join(pos, ", "))
		}
	}
	rows, err := s.db.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("usage query: %w", err)
	}
	defer rows.Close()
	var out []UsageRow
	for rows.Next() {
		var r UsageRow
		var cost int64
		dest := make([]any, 0, len(dims)+len(dailySums))
		for _, g := range q.GroupBy {
			dest = append(dest, r.dim(g))
		}
		dest = append(dest, &r.Requests)
		for _, b := range metering.Buckets {
			dest = append(dest, b.Of(&r.Usage))
		}
		dest = append(dest, &cost)
		for _, c := range rollupCounts {
			dest = append(dest, c.row(&r))
		}
		if opt.rank > 0 {
			dest = append(dest, opt.groups)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("usage query: %w", err)
		}
		if r.Requests == 0 {
			continue
		}
		if r.PricedRequests > 0 {
			r.CostMicroUSD = &cost
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("usage query: %w", err)
	}
	return out, nil
}

// rankOrder is queryOpt.rank's order in SQL over the select list's sums,
// with key the ranked dimension's expression.
func rankOrder(sums []string, key, engine string) string {
	var tokens []string
	for i, b := range metering.Buckets {
		if rankToken(b) {
			tokens = append(tokens, sums[aggTokens+i])
		}
	}
	return rankOrderOf(sums[aggCounts], sums[aggCost], strings.Join(tokens, " + "), key, engine)
}

// rankOrderOf is rankOrder over the expressions of the priced requests,
// the cost, the ranked tokens and the key.
func rankOrderOf(priced, cost, tokens, key, engine string) string {
	if engine == store.Postgres {
		key += ` COLLATE "C"`
	}
	return "CASE WHEN " + priced + " > 0 THEN 0 ELSE 1 END, " + cost + " DESC, " + tokens + " DESC, " + key
}

// dimExpr is the SQL of a group-by dimension in usage_daily or usage_records.
func dimExpr(g string, rollup bool, engine string) string {
	switch g {
	case GroupHour:
		// started_at is fixed-width text on SQLite (sqliteTimeLayout).
		if engine == store.SQLite {
			return "substr(started_at, 1, 10) || 'T' || substr(started_at, 12, 2) || ':00:00Z'"
		}
		return `to_char(started_at, 'YYYY-MM-DD"T"HH24":00:00Z"')`
	case GroupModel:
		if rollup {
			return "model"
		}
		return rawModelExpr
	case GroupUser:
		return "user_id"
	case GroupToken:
		return "token_id"
	case GroupCredential:
		return "credential_id"
	case GroupSession:
		return "session_id"
	}
	return g // day, project, workspace, harness, provider, service_tier: same column name
}
