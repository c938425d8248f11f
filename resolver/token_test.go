package resolver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/registry"

	"github.com/tollgate/tollgate/internal/testkit"
)

func mustToken(tb testing.TB, s *Service, spec TokenSpec) (string, TokenInfo) {
	tb.Helper()
	tok, info, err := s.IssueToken(context.Background(), spec)
	if err != nil {
		tb.Fatal(err)
	}
	return tok, info
}

func TestTokenIssueAndAuthenticate(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn)
		tok, info := mustToken(t, e.svc, TokenSpec{Workspace: "w1", Project: "p1", User: "u1", Harness: "claude-code", TTL: time.Hour})
		if !strings.HasPrefix(tok, TokenPrefix) || len(tok) != tokenLen || !wellFormed(tok) {
			t.Fatalf("token is not tgw_ + 43 base64url characters (len %d)", len(tok))
		}
		if !strings.HasPrefix(info.ID, "tok_") || info.Prefix != tok[:8] {
			t.Fatalf("info: id %q prefix %q", info.ID, info.Prefix)
		}
		if want := e.clock.Now().Add(time.Hour); !info.ExpiresAt.Equal(want) {
			t.Fatalf("expires %v, want %v", info.ExpiresAt, want)
		}
		id, err := e.svc.Authenticate(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		want := Identity{TokenID: info.ID, Workspace: "w1", Project: "p1", User: "u1", Harness: "claude-code"}
		if id != want {
			t.Fatalf("identity %+v, want %+v", id, want)
		}
		// A second Service reads it from the database.
		id2, err := mustService(t, dsn).svc.Authenticate(ctx, tok)
		if err != nil || id2 != want {
			t.Fatalf("fresh service: %+v, %v", id2, err)
		}
		list, err := e.svc.ListTokens(ctx, TokenFilter{Workspace: "w1"})
		if err != nil || len(list) != 1 || list[0].ID != info.ID {
			t.Fatalf("ListTokens: %+v, %v", list, err)
		}
		b, _ := json.Marshal(list)
		if strings.Contains(string(b), tok[8:]) {
			t.Fatal("ListTokens output contains the token")
		}
	})
}

func TestTokenRefusals(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn)
		s := e.svc
		live, _ := mustToken(t, s, TokenSpec{Workspace: "w1", User: "u1", TTL: time.Hour})
		short, _ := mustToken(t, s, TokenSpec{Workspace: "w1", User: "u1", TTL: 30 * time.Second})
		revoked, rinfo := mustToken(t, s, TokenSpec{Workspace: "w2", User: "u1"})
		stopped, _ := mustToken(t, s, TokenSpec{Workspace: "w3", User: "u1"})
		for _, tok := range []string{live, short, revoked, stopped} {
			if _, err := s.Authenticate(ctx, tok); err != nil {
				t.Fatal(err) // now cached
			}
		}
		if err := s.RevokeToken(ctx, rinfo.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeToken(ctx, rinfo.ID); err != nil {
			t.Fatalf("revoking twice: %v", err)
		}
		if n, err := s.RevokeWorkspaceTokens(ctx, "w3"); err != nil || n != 1 {
			t.Fatalf("RevokeWorkspaceTokens: %d, %v", n, err)
		}
		// short expires exactly now, while its cache entry (TokenCacheTTL,
		// one minute) is still fresh.
		e.clock.Advance(30 * time.Second)

		flipped := []byte(live)
		flipped[10] ^= 1
		for _, tc := range []struct {
			name  string
			token string
			want  error
		}{
			{"Missing", "", ErrTokenMissing},
			{"WrongPrefix", "sk_" + live[3:], ErrTokenInvalid},
			{"TooShort", live[:20], ErrTokenInvalid},
			{"TooLong", live + "A", ErrTokenInvalid},
			{"BadCharacter", live[:20] + "!" + live[21:], ErrTokenInvalid},
			{"Unknown", string(flipped), ErrTokenInvalid},
			{"UnknownAgainFromNegativeCache", string(flipped), ErrTokenInvalid},
			{"ExpiredWhileCached", short, ErrTokenExpired},
			{"RevokedAtOnceDespiteCache", revoked, ErrTokenRevoked},
			{"WorkspaceStopped", stopped, ErrTokenRevoked},
			{"LiveStillAccepted", live, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := s.Authenticate(ctx, tc.token)
				if !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				if err != nil && tc.token != "" && strings.Contains(err.Error(), tc.token[4:]) {
					t.Fatal("error repeats the token")
				}
			})
		}
		// Expired from the database too, not only from the cache.
		if _, err := mustService(t, dsn, withConfig(func(c *Config) { c.now = e.clock.Now })).svc.Authenticate(ctx, short); !errors.Is(err, ErrTokenExpired) {
			t.Fatalf("expired via a fresh service: %v", err)
		}
		if err := s.RevokeToken(ctx, "tok_nope"); !errors.Is(err, ErrTokenNotFound) {
			t.Fatalf("revoke unknown: %v", err)
		}
		list, _ := s.ListTokens(ctx, TokenFilter{User: "u1"})
		all, _ := s.ListTokens(ctx, TokenFilter{User: "u1", IncludeRevoked: true})
		if len(list) != 2 || len(all) != 4 {
			t.Fatalf("ListTokens: %d live, %d with revoked; want 2 and 4", len(list), len(all))
		}
	})
}

func TestIssueTokenValidates(t *testing.T) {
	t.Parallel()
	s := mustService(t, filepath.Join(t.TempDir(), "t.db")).svc
	for _, tc := range []struct {
		name string
		spec TokenSpec
		want error
	}{
		{"NoWorkspace", TokenSpec{User: "u1"}, ErrInvalidArgument},
		{"NoUser", TokenSpec{Workspace: "w1"}, ErrInvalidArgument},
		{"NegativeTTL", TokenSpec{Workspace: "w1", User: "u1", TTL: -time.Second}, ErrInvalidArgument},
		{"TTLTooLong", TokenSpec{Workspace: "w1", User: "u1", TTL: MaxTokenTTL + time.Second}, ErrInvalidArgument},
		{"UnknownHarness", TokenSpec{Workspace: "w1", User: "u1", Harness: "nope"}, registry.ErrUnknownHarness},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := s.IssueToken(context.Background(), tc.spec); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// dumpTables renders every row of every resolver table as text.
func dumpTables(tb testing.TB, db *store.DB) string {
	tb.Helper()
	var b strings.Builder
	for _, tbl := range []string{"resolver_meta", "resolver_credentials", "resolver_bindings", "resolver_tokens", "resolver_change_log"} {
		rows, err := db.QueryContext(context.Background(), "SELECT * FROM "+tbl)
		if err != nil {
			tb.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				tb.Fatal(err)
			}
			for _, v := range vals {
				if bs, ok := v.([]byte); ok {
					v = string(bs)
				}
				fmt.Fprintf(&b, "%v|", v)
			}
			b.WriteString("\n")
		}
		rows.Close()
	}
	return b.String()
}

func TestRawTokenNeverStored(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn)
		var toks []string
		for i := range 5 {
			tok, _ := mustToken(t, e.svc, TokenSpec{Workspace: fmt.Sprintf("w%d", i), User: "u1"})
			if _, err := e.svc.Authenticate(ctx, tok); err != nil {
				t.Fatal(err)
			}
			toks = append(toks, tok)
		}
		if err := e.svc.flushUsage(ctx); err != nil {
			t.Fatal(err)
		}
		dump := dumpTables(t, e.db)
		if !strings.Contains(dump, "tgw_") {
			t.Fatal("dump lacks display prefixes; is it reading the tables?")
		}
		files := []string{dump}
		if e.db.Engine == store.SQLite {
			for _, suffix := range []string{"", "-wal"} {
				if b, err := os.ReadFile(dsn + suffix); err == nil {
					files = append(files, string(b))
				}
			}
		}
		for _, tok := range toks {
			for _, f := range files {
				if strings.Contains(f, tok[8:]) {
					t.Fatal("the database holds a raw token")
				}
			}
		}
	})
}

func TestLastUsedFlushedInBatches(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn)
		tok, info := mustToken(t, e.svc, TokenSpec{Workspace: "w1", User: "u1"})
		cred, err := e.svc.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1"))
		if err != nil {
			t.Fatal(err)
		}
		dbLastUsed := func(table, id string) sql.NullTime {
			var t0 sql.NullTime
			if err := e.db.QueryRowContext(ctx, "SELECT last_used_at FROM "+table+" WHERE id = $1", id).Scan(&t0); err != nil {
				t.Fatal(err)
			}
			return t0
		}
		for range 50 {
			e.clock.Advance(time.Second)
			if _, err := e.svc.Authenticate(ctx, tok); err != nil {
				t.Fatal(err)
			}
			if _, err := e.svc.Resolve(ctx, ccAnthropic); err != nil {
				t.Fatal(err)
			}
		}
		if dbLastUsed("resolver_tokens", info.ID).Valid || dbLastUsed("resolver_credentials", cred.ID).Valid {
			t.Fatal("a request wrote last-used to the database")
		}
		list, _ := e.svc.ListTokens(ctx, TokenFilter{})
		if !list[0].LastUsedAt.Equal(e.clock.Now()) {
			t.Fatalf("ListTokens last used %v, want the pending %v", list[0].LastUsedAt, e.clock.Now())
		}
		if err := e.svc.flushUsage(ctx); err != nil {
			t.Fatal(err)
		}
		for _, x := range []struct{ table, id string }{{"resolver_tokens", info.ID}, {"resolver_credentials", cred.ID}} {
			if got := dbLastUsed(x.table, x.id); !got.Valid || !got.Time.Equal(e.clock.Now()) {
				t.Fatalf("%s last used %v after flush, want %v", x.table, got, e.clock.Now())
			}
		}

		// The started goroutine flushes on its own, and Close flushes the rest.
		s2 := mustService(t, dsn, withConfig(func(c *Config) { c.UsageFlushInterval = 10 * time.Millisecond }))
		s2.clock.Advance(time.Hour)
		if err := s2.svc.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := s2.svc.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 2*time.Second, "the last-used time to be flushed", func() bool {
			return dbLastUsed("resolver_tokens", info.ID).Time.Equal(s2.clock.Now())
		})
		s2.clock.Advance(time.Hour)
		if _, err := s2.svc.Resolve(ctx, ccAnthropic); err != nil {
			t.Fatal(err)
		}
		if err := s2.svc.Close(); err != nil {
			t.Fatal(err)
		}
		if got := dbLastUsed("resolver_credentials", cred.ID); !got.Time.Equal(s2.clock.Now()) {
			t.Fatalf("Close did not flush: %v", got)
		}
	})
}
