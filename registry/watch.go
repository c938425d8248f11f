package registry

import (
	"context"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// Holder serves the current registry and swaps in a new one on Reload. A
// request takes Current once and keeps that registry to its end.
type Holder struct {
	path string
	cur  atomic.Pointer[Registry]
	log  *slog.Logger
	mod  time.Time
	size int64
}

// NewHolder loads path and returns a Holder serving it.
func NewHolder(path string, log *slog.Logger) (*Holder, error) {
	r, err := LoadFile(path)
	if err != nil {
		return nil, err
	}
	h := &Holder{path: path, log: log}
	h.cur.Store(r)
	h.mod, h.size = stat(path)
	return h, nil
}

// NewStatic returns a Holder that always serves r (tests, embedded use).
func NewStatic(r *Registry) *Holder {
	h := &Holder{log: slog.New(slog.DiscardHandler)}
	h.cur.Store(r)
	return h
}

// Current returns the registry in force.
func (h *Holder) Current() *Registry { return h.cur.Load() }

// Reload re-reads the file. An invalid file is refused: the error is logged
// and returned, and the old registry keeps serving.
func (h *Holder) Reload() error {
	if h.path == "" {
		return nil
	}
	h.mod, h.size = stat(h.path)
	r, err := LoadFile(h.path)
	if err != nil {
		h.log.Error("registry reload refused; keeping the previous registry", "path", h.path, "err", err)
		return err
	}
	old := h.cur.Swap(r)
	h.log.Info("registry reloaded", "path", h.path, "version", r.Version, "previous", old.Version)
	return nil
}

// Watch reloads when the file's modification time or size changes, polling
// every interval, or when a value arrives on signals (SIGHUP). It returns
// when ctx ends. Polling avoids an inotify dependency and works on every
// filesystem, including bind-mounted ConfigMaps that swap symlinks.
func (h *Holder) Watch(ctx context.Context, interval time.Duration, signals <-chan os.Signal) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-signals:
			_ = h.Reload()
		case <-t.C:
			if m, s := stat(h.path); !m.Equal(h.mod) || s != h.size {
				_ = h.Reload()
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
