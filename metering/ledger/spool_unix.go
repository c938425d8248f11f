//go:build unix

package ledger

import (
	"os"
	"syscall"
)

// spoolLockFile takes an exclusive, non-blocking flock on f: two processes
// appending to and deleting from one spool would lose records. The kernel
// drops the lock when the process dies, even by SIGKILL.
func spoolLockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}

// lockFileWait takes an exclusive flock on f, waiting for its holder: the
// quarantine lock is held briefly, or for one import.
func lockFileWait(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
}

func spoolUnlockFile(f *os.File) {
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// spoolSyncDir fsyncs a directory so a new file's entry is durable.
func spoolSyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
