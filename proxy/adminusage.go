package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/tollgate/tollgate/metering/ledger"
)

// UsageAnalytics answers the Usage page's queries (ledger.Store): built on
// the same Query as the usage API, so their totals agree.
type UsageAnalytics interface {
	Series(ctx context.Context, q ledger.SeriesQuery) (*ledger.Series, error)
	Top(ctx context.Context, q ledger.TopQuery) (*ledger.Top, error)
	Cache(ctx context.Context, q ledger.CacheQuery, p ledger.Pricer) (*ledger.Cache, error)
}

// usageAnalyticsRoutes mounts GET /usage/series, /usage/top and
// /usage/cache when the usage store answers them. Their parameters are
// strict: a misspelt filter would otherwise widen the answer silently.
func (s *Server) usageAnalyticsRoutes(g *adminMux) {
	a, ok := s.cfg.Usage.(UsageAnalytics)
	if !ok {
		return
	}
	g.Get("/usage/series", usageEndpoint(s, ledger.SeriesParams, ledger.ParseSeriesQuery,
		func(ctx context.Context, q ledger.SeriesQuery) (*ledger.Series, error) { return a.Series(ctx, q) },
		func(sr *ledger.Series, buf *bytes.Buffer) error { return ledger.WriteCSV(buf, sr.GroupBy(), sr.Rows) }))
	g.Get("/usage/top", usageEndpoint(s, ledger.TopParams, ledger.ParseTopQuery,
		func(ctx context.Context, q ledger.TopQuery) (*ledger.Top, error) { return a.Top(ctx, q) },
		func(t *ledger.Top, buf *bytes.Buffer) error { return ledger.WriteCSV(buf, []string{t.By}, t.CSVRows()) }))
	g.Get("/usage/cache", usageEndpoint(s, ledger.CacheParams, ledger.ParseCacheQuery,
		func(ctx context.Context, q ledger.CacheQuery) (*ledger.Cache, error) {
			var p ledger.Pricer
			if s.cfg.Pricer != nil {
				p = s.cfg.Pricer
			}
			return a.Cache(ctx, q, p)
		},
		func(c *ledger.Cache, buf *bytes.Buffer) error { return ledger.WriteCacheCSV(buf, c) }))
}

// usageEndpoint is one analytics endpoint: strict parameters (own plus
// ledger.UsageFilterParams and format), parse, answer, render as JSON or,
// with format=csv, as the CSV of exactly that answer.
func usageEndpoint[Q, R any](s *Server, own []string, parse func(func(string) string, time.Time) (Q, error),
	answer func(context.Context, Q) (R, error), writeCSV func(R, *bytes.Buffer) error) fiber.Handler {
	allowed := slices.Concat(ledger.UsageFilterParams, own, []string{"format"})
	return func(c *fiber.Ctx) error {
		if err := strictParams(c, allowed); err != nil {
			return err
		}
		format := c.Query("format", "json")
		if format != "json" && format != "csv" {
			return newError(kindBadRequest, "format must be json or csv")
		}
		q, err := parse(func(k string) string { return c.Query(k) }, s.cfg.timeNow())
		if err != nil {
			return err
		}
		out, err := answer(c.UserContext(), q)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if format == "csv" {
			name := strings.ReplaceAll(strings.TrimPrefix(c.Path(), adminPrefix+"/"), "/", "-")
			c.Set(fiber.HeaderContentType, "text/csv; charset=utf-8")
			c.Set(fiber.HeaderContentDisposition, `attachment; filename="tollgate-`+name+`.csv"`)
			err = writeCSV(out, &buf)
		} else {
			c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
			err = json.NewEncoder(&buf).Encode(out)
		}
		if err != nil {
			return err
		}
		return c.Send(buf.Bytes())
	}
}

// strictParams refuses a query parameter not in allowed, or given twice,
// naming it and what is accepted.
func strictParams(c *fiber.Ctx, allowed []string) error {
	var probs []string
	seen := map[string]bool{}
	c.Context().QueryArgs().VisitAll(func(k, _ []byte) {
		name := string(k)
		switch {
		case seen[name] && !slices.Contains(allowed, name):
		case !slices.Contains(allowed, name):
			probs = append(probs, "unknown parameter "+jsonQuote(name))
		case seen[name]:
			probs = append(probs, "parameter "+jsonQuote(name)+" given more than once")
		}
		seen[name] = true
	})
	if len(probs) > 0 {
		return newError(kindBadRequest, "%s (accepted: %s)", strings.Join(probs, "; "), strings.Join(allowed, ", "))
	}
	return nil
}

func jsonQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
