package governance

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// DefaultPoll is how often a Watcher reads the policy version when no
// notification arrives.
const DefaultPoll = time.Second

// WatchConfig configures a Watcher.
type WatchConfig struct {
	// Poll is how often the policy version is checked when no notification
	// arrives (default 1 s, TOLLGATE_POLL_INTERVAL like the resolver's).
	Poll time.Duration
	// PollOnly skips LISTEN (TOLLGATE_PG_NOTIFY=off).
	PollOnly bool
	Log      *slog.Logger
}

// Watcher holds the current Policies of this replica and reloads them when
// the store changes: on a NOTIFY on NotifyChannel (PostgreSQL), else when a
// poll sees a new version.
type Watcher struct {
	st  *Store
	cfg WatchConfig
	log *slog.Logger
	// cur is read on every request: an atomic load, no lock.
	cur atomic.Pointer[Policies]
	// reload serializes loads, so a slower older load never replaces a
	// newer snapshot.
	reload  sync.Mutex
	wake    chan struct{}
	done    chan struct{}
	started atomic.Bool
}

// NewWatcher returns a watcher over st; Start loads the first snapshot.
func NewWatcher(st *Store, cfg WatchConfig) *Watcher {
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	w := &Watcher{st: st, cfg: cfg, log: cfg.Log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if w.log == nil {
		w.log = slog.Default()
	}
	w.cur.Store(&Policies{})
	return w
}

// Start loads the policies (an error if the store cannot be read) and
// keeps them current until ctx ends, in goroutines; Done is closed once
// they have returned. A failed Start may be retried; a second successful
// one is refused.
func (w *Watcher) Start(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("governance: Watcher started twice")
	}
	if err := w.Refresh(ctx); err != nil {
		w.started.Store(false) // a caller may retry
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.run(ctx) }()
	if !w.cfg.PollOnly && w.st.db.Engine == store.Postgres {
		wg.Add(1)
		go func() { defer wg.Done(); w.listen(ctx) }()
	}
	go func() { wg.Wait(); close(w.done) }()
	return nil
}

// Done is closed when the goroutines of a successful Start have stopped.
func (w *Watcher) Done() <-chan struct{} { return w.done }

// Current returns the latest snapshot; never nil.
func (w *Watcher) Current() *Policies { return w.cur.Load() }

// Refresh reloads now (tests, and the admin API after its own write, so a
// write is enforced on this replica before the answer returns).
func (w *Watcher) Refresh(ctx context.Context) error {
	w.reload.Lock()
	defer w.reload.Unlock()
	p, err := w.st.Load(ctx)
	if err != nil {
		return err
	}
	w.cur.Store(p)
	return nil
}

// poll reloads when the stored version differs from the snapshot's: one
// integer read per tick while nothing changes.
func (w *Watcher) poll(ctx context.Context) error {
	v, err := w.st.Version(ctx)
	if err != nil {
		return err
	}
	if v == w.Current().Version {
		return nil
	}
	return w.Refresh(ctx)
}

func (w *Watcher) run(ctx context.Context) {
	t := time.NewTicker(w.cfg.Poll)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.wake:
		}
		// Bounded, so a hung connection cannot stall the loop past a few
		// ticks; the last snapshot stays in force meanwhile.
		pctx, cancel := context.WithTimeout(ctx, max(w.cfg.Poll, time.Second))
		err := w.poll(pctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			w.log.Warn("policy reload failed; enforcing the last policies loaded until the store answers",
				"version", w.Current().Version, "err", err)
		case err == nil && failing:
			failing = false
			w.log.Info("policy reload succeeded again", "version", w.Current().Version)
		}
	}
}

// listen wakes the poller on every notification and after every
// (re)connect, when notifications sent meanwhile were lost.
func (w *Watcher) listen(ctx context.Context) {
	err := w.st.db.Listen(ctx, NotifyChannel, store.ListenHandler{
		OnNotify:  func(string) { w.wakePoll() },
		OnConnect: w.wakePoll,
		OnDown: func(err error) {
			w.log.Warn("policy notifications lost; polling every interval until the listener reconnects", "err", err)
		},
		Log: w.log,
	})
	switch {
	case errors.Is(err, store.ErrListenUnsupported):
		w.log.Info("policy notifications unsupported here; polling only", "poll_interval", w.cfg.Poll.String(), "err", err)
	case err != nil && ctx.Err() == nil:
		w.log.Warn("policy listener stopped; polling only", "err", err)
	}
}

func (w *Watcher) wakePoll() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}
