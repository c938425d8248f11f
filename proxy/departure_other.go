//go:build !unix

package proxy

// peekGone cannot peek here: it reports a byte waiting, which ends the
// watch at once, so departures are noticed only by a failed write.
func peekGone(fd uintptr) (gone, wait bool) { return false, false }
