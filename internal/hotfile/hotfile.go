// Package hotfile serves a value parsed from a file and swaps in a new one
// when the file changes or on a signal, keeping the old value when the new
// file does not parse. The registry and the price table both reload this way.
package hotfile

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Value holds the current parse of one file. Readers call Current once per
// request and keep what they got, so a reload never changes a request midway.
type Value[T any] struct {
	name  string
	path  string
	parse func(path string) (*T, error)
	log   *slog.Logger
	cur   atomic.Pointer[T]

	mu   sync.Mutex
	mod  time.Time
	size int64
}

// Load parses path with parse and returns a Value serving it. name labels
// log lines ("registry", "prices").
func Load[T any](name, path string, parse func(string) (*T, error), log *slog.Logger) (*Value[T], error) {
	v := &Value[T]{name: name, path: path, parse: parse, log: log}
	v.mod, v.size = stat(path)
	t, err := parse(path)
	if err != nil {
		return nil, err
	}
	v.cur.Store(t)
	return v, nil
}

// Static returns a Value that always serves t.
func Static[T any](t *T) *Value[T] {
	v := &Value[T]{log: slog.New(slog.DiscardHandler)}
	v.cur.Store(t)
	return v
}

// Current returns the value in force.
func (v *Value[T]) Current() *T { return v.cur.Load() }

// Reload re-reads the file. A file that does not parse is refused: the error
// is logged and returned, and the previous value keeps serving.
func (v *Value[T]) Reload() error {
	if v.path == "" {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.mod, v.size = stat(v.path)
	t, err := v.parse(v.path)
	if err != nil {
		v.log.Error(v.name+" reload refused; keeping the previous version", "path", v.path, "err", err)
		return err
	}
	v.cur.Store(t)
	v.log.Info(v.name+" reloaded", "path", v.path)
	return nil
}

// Watch reloads when the file's modification time or size changes, polling
// every interval, or when a value arrives on signals (SIGHUP), until ctx
// ends. Polling needs no inotify dependency and also sees ConfigMap-style
// symlink swaps.
func (v *Value[T]) Watch(ctx context.Context, interval time.Duration, signals <-chan os.Signal) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-signals:
			_ = v.Reload()
		case <-t.C:
			v.mu.Lock()
			m, s := stat(v.path)
			changed := !m.Equal(v.mod) || s != v.size
			v.mu.Unlock()
			if changed {
				_ = v.Reload()
			}
		}
	}
}

func stat(path string) (time.Time, int64) {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}, -1
	}
	return fi.ModTime(), fi.Size()
}
