package ledger

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
)

// TestOwnersFindsTheCreatingProject: the owner of an upstream id is the
// project whose request on that kind of credential returned it, and only
// records of the same provider, dialect and tier count.
func TestOwnersFindsTheCreatingProject(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			s := mustUsageStore(t, engine)
			rec := func(id, project, upstream, provider, dialect, tier string) *metering.Record {
				r := usageRecordN(id, 0, usageDay.Add(time.Hour))
				r.Project, r.UpstreamID, r.Provider, r.Dialect, r.CredTier = project, upstream, provider, dialect, tier
				return r
			}
			recs := []*metering.Record{
				rec("r1", "alpha", "resp_1", "openai", "openai-responses", "platform"),
				// The same id from elsewhere names a different object.
				rec("r2", "beta", "resp_1", "openrouter", "openai-responses", "platform"),
				rec("r3", "gamma", "resp_1", "openai", "openai-chat", "platform"),
				rec("r4", "delta", "resp_1", "openai", "openai-responses", "project"),
				rec("r5", "alpha", "resp_2", "openai", "openai-responses", "platform"),
				rec("r6", "beta", "resp_2", "openai", "openai-responses", "platform"),
				rec("r7", "beta", "", "openai", "openai-responses", "platform"),
			}
			if _, err := s.InsertBatch(ctx, recs); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				id   string
				want []string
			}{
				{"resp_1", []string{"alpha"}},
				{"resp_2", []string{"alpha", "beta"}},
				{"resp_none", nil},
				{"", nil},
			} {
				got, err := s.Owners(ctx, ObjectRef{UpstreamID: tc.id, Provider: "openai", Dialect: "openai-responses", CredTier: "platform"})
				if err != nil {
					t.Fatal(err)
				}
				slices.Sort(got)
				if !slices.Equal(got, tc.want) {
					t.Errorf("owners of %q = %v, want %v", tc.id, got, tc.want)
				}
			}
		})
	}
}

// TestOwnersUsesAnIndex: a GET by id on the platform key must not scan the
// whole usage table, or any caller could make tollgate read it per request.
func TestOwnersUsesAnIndex(t *testing.T) {
	ctx := context.Background()
	s := mustUsageStore(t, store.SQLite)
	rows, err := s.db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+ownersSQL, "resp_1", "openai", "openai-responses", "platform")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if p := strings.Join(plan, "; "); !strings.Contains(p, "usage_records_upstream") {
		t.Errorf("owner lookup plan %q does not use the upstream_id index", p)
	}
}
