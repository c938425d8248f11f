package resolver

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/registry"
)

// testRegistryYAML is a small registry: two providers, three dialects and
// three harnesses, one of which (opencode) speaks two dialects.
const testRegistryYAML = `version: 1
dialects:
  anthropic-messages:
    route: anthropic
    error_shape: anthropic
    paths:
      - {path: /v1/messages, methods: [POST], metered: true}
  openai-chat:
    route: openai
    error_shape: openai
    paths:
      - {path: /v1/chat/completions, methods: [POST], metered: true}
  openai-responses:
    route: openai
    error_shape: openai
    paths:
      - {path: /v1/responses, methods: [POST], metered: true}
providers:
  anthropic: {base_url: "https://api.anthropic.com", dialects: [anthropic-messages], auth: x-api-key}
  openai: {base_url: "https://api.openai.com", dialects: [openai-chat, openai-responses], auth: bearer}
  groq: {base_url: "https://api.groq.com/openai", dialects: [openai-chat, openai-responses], auth: bearer}
harnesses:
  claude-code: {dialects: [anthropic-messages], provider: anthropic, base_url_env: ANTHROPIC_BASE_URL, key_env: ANTHROPIC_AUTH_TOKEN, key_header: authorization}
  opencode: {dialects: [openai-chat, anthropic-messages], provider: openai, base_url_env: OPENCODE_BASE_URL, key_env: TOLLGATE_TOKEN, key_header: authorization}
  codex: {dialects: [openai-responses], provider: openai, base_url_env: OPENAI_BASE_URL, key_env: TOLLGATE_TOKEN, key_header: authorization}
`

func mustRegistry(tb testing.TB) *registry.Holder {
	tb.Helper()
	r, err := registry.Parse([]byte(testRegistryYAML))
	if err != nil {
		tb.Fatal(err)
	}
	return registry.NewStatic(r)
}

// engines returns a DSN factory per engine: always SQLite, and PostgreSQL
// when TOLLGATE_TEST_POSTGRES names a database. Each call of a factory
// yields a fresh, empty database (a new file, or a new schema that is
// dropped at cleanup) so tests never collide.
func engines(tb testing.TB) map[string]func(testing.TB) string {
	m := map[string]func(testing.TB) string{
		store.SQLite: func(tb testing.TB) string {
			return filepath.Join(tb.TempDir(), "resolver.db")
		},
	}
	if pg := os.Getenv("TOLLGATE_TEST_POSTGRES"); pg != "" {
		m[store.Postgres] = func(tb testing.TB) string { return pgSchemaDSN(tb, pg) }
	}
	return m
}

func pgSchemaDSN(tb testing.TB, base string) string {
	// Commits need not wait for the disk in tests.
	return testkit.PostgresSchema(tb, base, "resolver_test_") + "&synchronous_commit=off"
}

// forEachEngine runs fn as a subtest per engine, each with a fresh DSN.
func forEachEngine(t *testing.T, fn func(t *testing.T, dsn string)) {
	for name, mk := range engines(t) {
		t.Run(name, func(t *testing.T) { fn(t, mk(t)) })
	}
}

func mustOpenDB(tb testing.TB, dsn string) *store.DB {
	tb.Helper()
	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// fakeClock is the injectable clock tests advance by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var (
	testKey1 = bytes.Repeat([]byte{1}, 32)
	testKey2 = bytes.Repeat([]byte{2}, 32)
)

// env is one Service under test and what it was built from.
type env struct {
	svc   *Service
	db    *store.DB
	dsn   string
	reg   *registry.Holder
	clock *fakeClock
	logs  *testkit.LogBuffer
}

type option func(*Config, *Deps)

func withKey(k []byte, prev ...[]byte) option {
	return func(c *Config, _ *Deps) { c.MasterKey, c.PreviousKeys = k, prev }
}

func withRegistry(h *registry.Holder) option {
	return func(_ *Config, d *Deps) { d.Registry = h }
}

// withDB shares an open handle instead of opening one per Service.
func withDB(db *store.DB) option {
	return func(_ *Config, d *Deps) { d.DB = db }
}

func withConfig(f func(*Config)) option {
	return func(c *Config, _ *Deps) { f(c) }
}

// newService builds a Service on dsn with its own database handle, a fake
// clock and a captured log; it does not fail the test on error.
func newService(tb testing.TB, dsn string, opts ...option) (*env, error) {
	tb.Helper()
	e := &env{dsn: dsn, clock: newFakeClock(), logs: &testkit.LogBuffer{}}
	cfg := Config{MasterKey: testKey1, AllowHTTPBaseURL: true, AllowPrivateBaseURL: true, now: e.clock.Now}
	deps := Deps{Registry: mustRegistry(tb), Log: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	if deps.DB == nil {
		deps.DB = mustOpenDB(tb, dsn)
	}
	e.db, e.reg = deps.DB, deps.Registry
	s, err := New(context.Background(), cfg, deps)
	if err != nil {
		return nil, err
	}
	e.svc = s
	tb.Cleanup(func() { s.Close() })
	return e, nil
}

func mustService(tb testing.TB, dsn string, opts ...option) *env {
	tb.Helper()
	e, err := newService(tb, dsn, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

func mustCred(tb testing.TB, s *Service, provider, secret string) Credential {
	tb.Helper()
	c, err := s.CreateCredential(context.Background(), CredentialSpec{Name: "test", Provider: provider, Secret: NewSecret(secret)})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func mustBind(tb testing.TB, s *Service, k BindingKey, credID string) {
	tb.Helper()
	if _, err := s.Bind(context.Background(), k, credID); err != nil {
		tb.Fatal(err)
	}
}
