//go:build !unix

package ledger

import "os"

// spoolLockFile is a no-op where flock is unavailable: one Writer per spool
// directory is then the operator's responsibility.
func spoolLockFile(*os.File) error { return nil }

func spoolUnlockFile(*os.File) {}

func lockFileWait(*os.File) error { return nil }

// spoolSyncDir is a no-op where directories cannot be fsync'd.
func spoolSyncDir(string) error { return nil }
