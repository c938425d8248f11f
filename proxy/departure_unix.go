//go:build unix

package proxy

import (
	"errors"
	"syscall"
)

// peekGone looks at the socket without taking a byte. wait means nothing
// is there yet (park until readable); otherwise gone says the client closed
// or the socket failed, and !gone that a byte is waiting.
func peekGone(fd uintptr) (gone, wait bool) {
	var b [1]byte
	for {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EWOULDBLOCK):
			return false, true
		case err != nil:
			return true, false
		}
		return n == 0, false
	}
}
