package ledger

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tollgate/tollgate/metering"
)

// quarantineLock is the file, in the spool directory, that the writer locks
// to append to the quarantine file and ImportQuarantine locks while it
// rewrites it, so a record quarantined during an import is not lost.
const quarantineLock = "quarantine.lock"

// quarantineEntry is one line of the quarantine file.
type quarantineEntry struct {
	Error  string           `json:"error"`
	Record *metering.Record `json:"record"`
}

// quarantineLine is a line of the quarantine file as read back: its
// 1-based number, its bytes (kept verbatim when the line stays), and the
// entry or why it does not parse.
type quarantineLine struct {
	no    int
	raw   []byte
	entry quarantineEntry
	err   error
}

// lockQuarantine takes the quarantine lock of dir, waiting for the holder.
func lockQuarantine(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, quarantineLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockFileWait(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		spoolUnlockFile(f)
		f.Close()
	}, nil
}

// appendQuarantine appends and fsyncs one entry under the quarantine lock.
func appendQuarantine(dir string, line []byte) error {
	unlock, err := lockQuarantine(dir)
	if err != nil {
		return err
	}
	defer unlock()
	return appendSync(filepath.Join(dir, quarantineName), line)
}

// readQuarantine reads dir's quarantine file; a missing file has no lines.
func readQuarantine(dir string) ([]quarantineLine, error) {
	b, err := os.ReadFile(filepath.Join(dir, quarantineName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("metering quarantine: %w", err)
	}
	var lines []quarantineLine
	for i, raw := range bytes.Split(b, []byte{'\n'}) {
		no := i + 1
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		l := quarantineLine{no: no, raw: raw}
		if err := json.Unmarshal(raw, &l.entry); err != nil {
			l.err = fmt.Errorf("unreadable line: %w", err)
		} else if l.entry.Record == nil || l.entry.Record.RequestID == "" {
			l.err = errors.New("unreadable line: no record with a request id")
		}
		lines = append(lines, l)
	}
	return lines, nil
}

// QuarantineRefusal is a quarantined record the store still refuses, or a
// line that holds no record.
type QuarantineRefusal struct {
	Line      int    `json:"line"`
	RequestID string `json:"request_id,omitempty"`
	Reason    string `json:"reason"`
}

// QuarantineReport is what ImportQuarantine did (or, in a dry run, would
// do: Imported then counts the records not yet in the store, and Refused
// only the unreadable lines).
type QuarantineReport struct {
	Imported int                 `json:"imported"`
	Present  int                 `json:"already_present"`
	Refused  []QuarantineRefusal `json:"refused"`
	DryRun   bool                `json:"dry_run"`
	// File is the quarantine file read.
	File string `json:"file"`
}

// ImportQuarantine replays the quarantine file of the spool directory dir
// into s, one record per transaction: a record the store now takes is
// imported, one it already holds is left alone (inserts are idempotent by
// request id, so running it twice counts nothing twice), and one it still
// refuses stays in the file with the reason reported by line number. The
// file is then replaced atomically by the lines that stay, or removed when
// none does. A store outage (disk full, unreachable) stops the import with
// an error; what was imported before it is gone from the file, the rest
// stays. With dryRun nothing is written. It holds the quarantine lock
// throughout, so a server writing to the same spool waits to quarantine.
func ImportQuarantine(ctx context.Context, dir string, s *Store, dryRun bool) (QuarantineReport, error) {
	rep := QuarantineReport{DryRun: dryRun, File: filepath.Join(dir, quarantineName)}
	if _, err := os.Stat(dir); err != nil {
		return rep, fmt.Errorf("metering quarantine: spool directory: %w", err)
	}
	unlock, err := lockQuarantine(dir)
	if err != nil {
		return rep, fmt.Errorf("metering quarantine: %w", err)
	}
	defer unlock()
	lines, err := readQuarantine(dir)
	if err != nil || len(lines) == 0 {
		return rep, err
	}
	var keep [][]byte
	var stop error
	for i, l := range lines {
		if stop != nil {
			keep = append(keep, l.raw)
			continue
		}
		if l.err != nil {
			rep.Refused = append(rep.Refused, QuarantineRefusal{Line: l.no, Reason: l.err.Error()})
			keep = append(keep, l.raw)
			continue
		}
		r := l.entry.Record
		if dryRun {
			present, err := s.holds(ctx, r)
			if err != nil {
				return rep, fmt.Errorf("metering quarantine: line %d: %w", l.no, err)
			}
			if present {
				rep.Present++
			} else {
				rep.Imported++
			}
			continue
		}
		n, err := s.InsertBatch(ctx, []*metering.Record{r})
		switch {
		case err == nil && n == 1:
			rep.Imported++
		case err == nil:
			rep.Present++
		case classifyStoreErr(err) == faultStore || ctx.Err() != nil:
			stop = fmt.Errorf("metering quarantine: line %d: store unavailable, %d lines left in %s: %w", l.no, len(lines)-i, quarantineName, err)
			keep = append(keep, l.raw)
		default:
			rep.Refused = append(rep.Refused, QuarantineRefusal{Line: l.no, RequestID: r.RequestID, Reason: err.Error()})
			keep = append(keep, l.raw)
		}
	}
	if dryRun {
		return rep, nil
	}
	if err := rewriteQuarantine(dir, keep); err != nil {
		return rep, errors.Join(stop, err)
	}
	return rep, stop
}

// holds says the store has r's row (by its stored, cleaned request id).
func (s *Store) holds(ctx context.Context, r *metering.Record) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM usage_records WHERE request_id = $1`, storeClean(r).RequestID).Scan(&n)
	return n > 0, err
}

// rewriteQuarantine replaces the quarantine file with lines (removes it
// when there are none): a temporary file, fsync'd, renamed over it, and the
// directory fsync'd, so a crash leaves either the old file or the new one.
func rewriteQuarantine(dir string, lines [][]byte) error {
	path := filepath.Join(dir, quarantineName)
	if len(lines) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("metering quarantine: %w", err)
		}
		return spoolSyncDir(dir)
	}
	tmp, err := os.CreateTemp(dir, quarantineName+".*.tmp")
	if err != nil {
		return fmt.Errorf("metering quarantine: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	w := bufio.NewWriter(tmp)
	for _, l := range lines {
		w.Write(l)
		w.WriteByte('\n')
	}
	err = w.Flush()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = spoolSyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("metering quarantine: %w", err)
	}
	return nil
}
