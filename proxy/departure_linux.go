//go:build linux

package proxy

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"syscall"
	"time"
)

// The epoll set of every departure watch and its one goroutine, started
// at the first watch. epoll_wait blocks that goroutine's thread, which is
// idle unless a watched client sends or leaves.
var departures struct {
	once    sync.Once
	epfd    int
	mu      sync.Mutex
	next    uint64
	watches map[uint64]*polledWatch
}

// departureEpollOff forces reading watches (tests of the fallback).
var departureEpollOff bool

const (
	watchOn = iota
	watchFired
	watchStopped
)

// polledWatch is a socket in the shared epoll set. Its event carries key,
// never the fd: a number the kernel may reuse once the connection closes.
type polledWatch struct {
	rc     syscall.RawConn
	key    uint64
	cancel context.CancelCauseFunc
	// arm adds the socket to the set once the watch has lasted
	// departureArmDelay: most watches (a request's auth, a quick answer)
	// end sooner, and then cost no system call at all.
	arm *time.Timer
	// mu orders an event's check against stop: a cancel the check starts
	// is over before stop returns.
	mu    sync.Mutex
	state int
	added bool // in the set
}

// departureArmDelay is how long a client may have left before its watch
// looks: a departure matters for waits of seconds (a provider's header
// wait, a silent stream), and two epoll_ctl calls per watch were about
// 5 µs of a short request's CPU under S1.
var departureArmDelay = 20 * time.Millisecond

// The watch wakes once (one-shot) for a byte, end of file or an error.
const watchEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

func watchPolled(rc syscall.RawConn, cancel context.CancelCauseFunc) *polledWatch {
	if departureEpollOff {
		return nil
	}
	departures.once.Do(startDepartures)
	if departures.epfd < 0 {
		return nil
	}
	w := &polledWatch{rc: rc, cancel: cancel}
	w.mu.Lock()
	w.arm = time.AfterFunc(departureArmDelay, w.add)
	w.mu.Unlock()
	return w
}

// add puts the socket in the set, unless the watch has ended.
func (w *polledWatch) add() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != watchOn {
		return
	}
	departures.mu.Lock()
	departures.next++
	w.key = departures.next
	// In the map first: the event may come before EpollCtl returns.
	departures.watches[w.key] = w
	departures.mu.Unlock()
	var cerr error
	// Control holds the fd: it cannot close and be reused meanwhile.
	err := w.rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: watchEvents, Fd: int32(uint32(w.key)), Pad: int32(uint32(w.key >> 32))}
		cerr = syscall.EpollCtl(departures.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err != nil || cerr != nil {
		// Closed meanwhile, or not pollable: nothing is watched, as
		// for a connection without a socket.
		forgetWatch(w.key)
		w.state = watchFired
		return
	}
	w.added = true
}

func startDepartures() {
	departures.watches = map[uint64]*polledWatch{}
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		slog.Warn("proxy: epoll for departure watches unavailable; one goroutine per watch instead", "err", err)
		departures.epfd = -1
		return
	}
	departures.epfd = fd
	go departureLoop(fd)
}

func departureLoop(epfd int) {
	evs := make([]syscall.EpollEvent, 64)
	for {
		n, err := syscall.EpollWait(epfd, evs, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			slog.Error("proxy: departure watches stopped", "err", err)
			return
		}
		departures.mu.Lock()
		for _, ev := range evs[:n] {
			if w := departures.watches[uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32]; w != nil {
				// Departures are rare; a cancel may take a while (it
				// closes the provider's connection).
				go w.check()
			}
		}
		departures.mu.Unlock()
	}
}

func forgetWatch(key uint64) {
	departures.mu.Lock()
	delete(departures.watches, key)
	departures.mu.Unlock()
}

// check looks at the socket an event woke the watch for.
func (w *polledWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != watchOn {
		return
	}
	var gone, wait bool
	if err := w.rc.Control(func(fd uintptr) { gone, wait = peekGone(fd) }); err != nil {
		// Closed by tollgate meanwhile (the kernel dropped it from the
		// set): nothing left to cancel, as with a reading watch.
		w.state = watchFired
		forgetWatch(w.key)
		return
	}
	if wait {
		// Nothing there after all: arm again.
		_ = w.rc.Control(func(fd uintptr) {
			ev := syscall.EpollEvent{Events: watchEvents, Fd: int32(uint32(w.key)), Pad: int32(uint32(w.key >> 32))}
			_ = syscall.EpollCtl(departures.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		})
		return
	}
	w.state = watchFired
	w.remove()
	if gone {
		w.cancel(errClientGone)
	}
}

// stop ends the watch; an event after it is ignored.
func (w *polledWatch) stop() {
	w.mu.Lock()
	added := w.state == watchOn && w.added
	w.state = watchStopped
	w.mu.Unlock()
	w.arm.Stop()
	if added {
		w.remove()
	}
}

// remove takes the socket out of the set. A closed connection left it
// already (closing the fd does that), and its number may be another's by
// now: Control then fails without calling.
func (w *polledWatch) remove() {
	_ = w.rc.Control(func(fd uintptr) {
		_ = syscall.EpollCtl(departures.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
	forgetWatch(w.key)
}
