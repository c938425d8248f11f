package resolver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Many goroutines resolve and authenticate while another rewrites the
// user's credential. Every answer must be one a committed state allows, and
// once the writes stop no reader may see a stale answer: a lookup that
// raced a write must never reinstate what the write replaced.
func TestConcurrentResolveDuringWrites(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn, withConfig(func(c *Config) {
			c.PollInterval = 5 * time.Millisecond
			c.UsageFlushInterval = 5 * time.Millisecond
		}))
		s := e.svc
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		const platform = "sk-platform-anthropic-concurrent"
		if _, err := s.SetPlatformKey(ctx, "anthropic", NewSecret(platform)); err != nil {
			t.Fatal(err)
		}
		uKey := BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"}
		u := mustCred(t, s, "anthropic", "sk-user-v-initial")
		mustBind(t, s, uKey, u.ID)
		tok, _ := mustToken(t, s, TokenSpec{Workspace: "w1", Project: "p1", User: "u1"})

		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					got, err := s.Resolve(ctx, ccAnthropic)
					switch {
					case err != nil:
						t.Errorf("reader %d: %v", g, err)
						return
					case got.Tier == TierUser && strings.HasPrefix(got.Secret.Reveal(), "sk-user-v"):
					case got.Tier == TierPlatform && got.Secret.Reveal() == platform:
					default:
						t.Errorf("reader %d: impossible answer from tier %s", g, got.Tier)
						return
					}
					if _, err := s.Authenticate(ctx, tok); err != nil {
						t.Errorf("reader %d: authenticate: %v", g, err)
						return
					}
					if i%100 == 0 {
						if _, err := s.ResolutionView(ctx, "p1", "u1"); err != nil {
							t.Errorf("reader %d: view: %v", g, err)
							return
						}
					}
				}
			}()
		}

		for i := range 20 {
			if err := s.SetCredentialSecret(ctx, u.ID, NewSecret(fmt.Sprintf("sk-user-v%d", i))); err != nil {
				t.Fatal(err)
			}
			if err := s.SetBindingActive(ctx, uKey, i%2 == 0); err != nil {
				t.Fatal(err)
			}
			if i%3 == 0 {
				if err := s.DisableCredential(ctx, u.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := s.SetCredentialSecret(ctx, u.ID, NewSecret("sk-user-v-final")); err != nil {
			t.Fatal(err)
		}
		if err := s.SetBindingActive(ctx, uKey, true); err != nil {
			t.Fatal(err)
		}
		// Readers are still running: every answer from now on is the final one.
		for range 200 {
			wantSecret(t, s, ccAnthropic, "sk-user-v-final")
		}
		close(stop)
		wg.Wait()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// A write that commits while a cache miss is being answered must win: the
// answer read before it may be returned once, but is never cached.
func TestWriteDuringMissIsNotUndone(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s, c := withPlatformKey(t, dsn)
		tok, info := mustToken(t, s, TokenSpec{Workspace: "w1", User: "u1"})

		s.hookBeforeCache = func() {
			s.hookBeforeCache = nil
			if err := s.DisableCredential(ctx, c.ID); err != nil {
				t.Error(err)
			}
		}
		wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1") // read before the write
		wantErr(t, s, ccAnthropic, ErrNoCredential)

		s.hookBeforeCache = func() {
			s.hookBeforeCache = nil
			if err := s.RevokeToken(ctx, info.ID); err != nil {
				t.Error(err)
			}
		}
		if _, err := s.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, tok); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("after a revoke during the miss: got %v, want ErrTokenRevoked", err)
		}
	})
}

// A lookup that begins after a write committed must see it, even while a
// read of the same key that began before the write is still in flight: it
// must not join that read's shared answer.
func TestMissAfterWriteDoesNotJoinEarlierRead(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s, c := withPlatformKey(t, dsn)
		var first atomic.Bool
		entered, release := make(chan struct{}), make(chan struct{})
		s.hookBeforeCache = func() {
			if first.CompareAndSwap(false, true) {
				close(entered)
				<-release
			}
		}
		doneA := make(chan struct{})
		go func() { defer close(doneA); s.Resolve(ctx, ccAnthropic) }()
		<-entered // A has read the enabled credential and is held
		if err := s.DisableCredential(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		gotB := make(chan error, 1)
		go func() { _, err := s.Resolve(ctx, ccAnthropic); gotB <- err }()
		select {
		case err := <-gotB:
			if !errors.Is(err, ErrNoCredential) {
				t.Errorf("a lookup after the write: %v, want ErrNoCredential", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("a lookup after the write waited for a read that began before it")
		}
		close(release)
		<-doneA
	})
}

// withPlatformKey is a Service whose anthropic platform key is c.
func withPlatformKey(t *testing.T, dsn string) (*Service, Credential) {
	t.Helper()
	s := mustService(t, dsn).svc
	c, err := s.SetPlatformKey(context.Background(), "anthropic", NewSecret("sk-platform-anthropic-1"))
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}
