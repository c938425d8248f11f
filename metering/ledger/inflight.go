package ledger

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/tollgate/tollgate/metering"
)

// The in-flight journal keeps the requests the provider received whose
// record does not exist yet, so that a process killed mid-stream still
// leaves one record per request (replicas.md §4). It sits beside the spool
// as inflight-<seq>.jsonl, framed like a spool line:
//
//	1a2b3c4d {"start":{…record as known when the request was sent…}}
//	1a2b3c4d {"progress":{…the same, with the usage seen so far…}}
//	1a2b3c4d {"end":"req_…"}
//
// A start line costs one write(2) before the upstream call; progress lines
// are rate-limited by the caller. End lines are not written per request:
// Record only notes the id, and the spool's sync loop writes the ids of a
// tick in one write(2) after the spool's fsync covered their records, so an
// end is never more durable than its record. Everything rides the spool's
// group fsync; nothing here fsyncs per request.
//
// Once the active file is journalCompactBytes long and at least twice the
// size of the open requests' lines, the next tick compacts: a new file
// starts with the lines of the open requests only, and the old one is
// deleted once the new one is synced. So a long stream never pins the
// journal, and a crash between the two leaves both, which replay reads in
// order. On start, the files left by an earlier process are read; every
// request without an end becomes a record with outcome interrupted, written
// after the spool's own replay (final records win; inserts are idempotent
// by request id), and then the files are deleted.
const (
	journalPrefix = "inflight-"
	journalSuffix = ".jsonl"
	// journalCompactBytes is the size past which the active journal is
	// compacted, as long as the open requests' lines are at most half of
	// it: at about 1 KiB per request, a compaction per thousand requests.
	journalCompactBytes = 1 << 20
)

// journalScratch holds the buffers lines are encoded in before they are
// copied to the one kept.
var journalScratch = sync.Pool{New: func() any { b := make([]byte, 0, 2<<10); return &b }}

// putScratch gives sb back, holding enc's buffer (the one sb held,
// unless a long line outgrew it); a failed encoding's nil keeps sb's.
func putScratch(sb *[]byte, enc []byte) {
	if enc != nil && cap(enc) <= 64<<10 {
		*sb = enc[:0]
	}
	journalScratch.Put(sb)
}

// journalOpen holds the lines of an open request, for a compaction to
// carry over.
type journalOpen struct {
	start, progress []byte
}

// journal is the in-flight journal of one spool directory. The spool's lock
// file covers it.
type journal struct {
	dir       string
	compactAt int64

	mu        sync.Mutex
	f         *os.File
	path      string
	seq       uint64
	size      int64
	open      map[string]journalOpen
	openBytes int64
	// ends are ids whose record is spooled, waiting for the next tick;
	// spare is the slice of the previous tick, reused.
	ends, spare []string
	buf         []byte
	dirty       bool // written since the last sync
	broken      bool // a write failed: compact into a new file before the next
	closed      bool
	// superseded are files a compaction replaced, deleted once the file
	// holding their open lines is synced.
	superseded []string
	// old are the files earlier processes left and pending the records
	// made from their open requests; both go once settled.
	old     []string
	pending []*metering.Record
}

// journalReplayStats counts what reading earlier processes' files found.
type journalReplayStats struct {
	files, open, torn, corrupt int
}

// openJournal reads the journal files left in dir (the spool directory,
// already locked) and starts a new one after them.
func openJournal(dir string, onBad func(path string, offset int64, torn bool, err error)) (*journal, journalReplayStats, error) {
	j := &journal{dir: dir, compactAt: journalCompactBytes, open: map[string]journalOpen{}}
	var st journalReplayStats
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, st, fmt.Errorf("metering journal: %w", err)
	}
	type file struct {
		seq  uint64
		path string
	}
	var files []file
	for _, e := range ents {
		if seq, ok := parseJournalName(e.Name()); ok && e.Type().IsRegular() {
			files = append(files, file{seq, filepath.Join(dir, e.Name())})
			j.seq = max(j.seq, seq)
		}
	}
	slices.SortFunc(files, func(a, b file) int { return cmp.Compare(a.seq, b.seq) })
	for _, f := range files {
		j.old = append(j.old, f.path)
	}
	st.files = len(files)
	if j.pending, err = readJournal(j.old, &st, onBad); err != nil {
		return nil, st, err
	}
	st.open = len(j.pending)
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.rotateLocked(); err != nil {
		return nil, st, err
	}
	return j, st, nil
}

func journalName(seq uint64) string {
	return fmt.Sprintf("%s%016x%s", journalPrefix, seq, journalSuffix)
}

func parseJournalName(name string) (uint64, bool) {
	return parseSeqName(name, journalPrefix, journalSuffix)
}

// removeFiles deletes paths; one already gone is no error.
func removeFiles(paths []string) error {
	var errs []error
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// journalEntry is one decoded journal line: exactly one field is set.
type journalEntry struct {
	Start    *metering.Record `json:"start"`
	Progress *metering.Record `json:"progress"`
	End      string           `json:"end"`
}

func decodeJournalLine(line []byte) (journalEntry, error) {
	var e journalEntry
	payload, err := checkedLine(line)
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(payload, &e); err != nil {
		return e, err
	}
	n := 0
	for _, set := range []bool{e.Start != nil, e.Progress != nil, e.End != ""} {
		if set {
			n++
		}
	}
	switch {
	case n != 1:
		return e, errors.New("journal line is not exactly one of start, progress, end")
	case e.Start != nil && e.Start.RequestID == "", e.Progress != nil && e.Progress.RequestID == "":
		return e, errors.New("journal record without request id")
	}
	return e, nil
}

// readJournal replays files in order and returns the requests left open,
// each as its interrupted record, in the order they started. A torn last
// line (a crash mid-append) and a corrupt line are counted and skipped.
func readJournal(paths []string, st *journalReplayStats, onBad func(path string, offset int64, torn bool, err error)) ([]*metering.Record, error) {
	open := map[string]*metering.Record{}
	var order []string
	for _, path := range paths {
		if err := readJournalFile(path, func(e journalEntry) {
			switch {
			case e.Start != nil:
				if _, ok := open[e.Start.RequestID]; !ok {
					order = append(order, e.Start.RequestID)
				}
				open[e.Start.RequestID] = e.Start
			case e.Progress != nil:
				// A progress line without its start (torn) has no
				// identity to record: ignored.
				if _, ok := open[e.Progress.RequestID]; ok {
					open[e.Progress.RequestID] = e.Progress
				}
			default:
				delete(open, e.End)
			}
		}, st, onBad); err != nil {
			return nil, err
		}
	}
	var recs []*metering.Record
	for _, id := range order {
		r, ok := open[id]
		if !ok {
			continue
		}
		delete(open, id) // an id started twice is recorded once
		recs = append(recs, interruptedRecord(r))
	}
	return recs, nil
}

func readJournalFile(path string, fn func(journalEntry), st *journalReplayStats, onBad func(string, int64, bool, error)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("metering journal: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	var off int64
	for {
		line, n, err := readSpoolLine(br)
		start := off
		off += n
		switch {
		case errors.Is(err, io.EOF):
			if n > 0 {
				st.torn++
				onBad(path, start, true, errors.New("unterminated last line"))
			}
			return nil
		case errors.Is(err, errLineTooLong):
			st.corrupt++
			onBad(path, start, false, err)
			continue
		case err != nil:
			return fmt.Errorf("metering journal %s: %w", path, err)
		}
		e, derr := decodeJournalLine(line[:len(line)-1])
		if derr != nil {
			st.corrupt++
			onBad(path, start, false, derr)
			continue
		}
		fn(e)
	}
}

// interruptedRecord makes r the record of a request whose process died
// before it ended: usage partial when some was seen, else missing with
// token and cost fields NULL, never 0 (wire-formats.md §8).
func interruptedRecord(r *metering.Record) *metering.Record {
	r.Outcome = metering.OutcomeInterrupted
	if r.Usage != nil {
		r.Source = metering.SourcePartial
	} else {
		r.Source = metering.SourceMissing
		r.CostMicroUSD, r.Unpriced, r.PriceVersion = nil, false, ""
	}
	return r
}

// appendJournalLine appends a framed {"<kind>":<record>} line; key is
// `{"start":` or `{"progress":`.
func appendJournalLine(dst []byte, key string, r *metering.Record) ([]byte, error) {
	n0 := len(dst)
	dst = append(dst, "00000000 "...)
	dst = append(dst, key...)
	dst, err := appendRecordJSON(dst, r)
	if err != nil {
		return nil, err
	}
	return sealLine(append(dst, '}'), n0), nil
}

func appendJournalEnd(dst []byte, id string) []byte {
	n0 := len(dst)
	dst = append(dst, "00000000 "...)
	dst = appendJSONStringField(dst, `{"end":`, id)
	return sealLine(append(dst, '}'), n0)
}

// begin writes r's start line and opens r's request id. r is read, not
// kept.
func (j *journal) begin(r *metering.Record) error {
	if r.RequestID == "" {
		return errors.New("metering journal: start without request id")
	}
	e := *r
	e.Outcome, e.Source = metering.OutcomeInterrupted, metering.SourceMissing
	e.Usage, e.CostMicroUSD, e.Unpriced, e.PriceVersion = nil, nil, false, ""
	// The line is kept while the request is open, for compactions: it is
	// encoded in a scratch buffer, then kept in one allocation of its size
	// (a start line is 600 to 900 bytes, so a guessed capacity either
	// wastes or reallocates).
	sb := journalScratch.Get().(*[]byte)
	enc, err := appendJournalLine((*sb)[:0], `{"start":`, &e)
	line := bytes.Clone(enc)
	putScratch(sb, enc)
	if err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		// After Close: the request's record will be dropped and logged.
		return nil
	}
	if o, ok := j.open[r.RequestID]; ok {
		j.openBytes -= int64(len(o.start) + len(o.progress))
	}
	// Open even if the write fails: the next compaction writes it again.
	j.open[r.RequestID] = journalOpen{start: line}
	j.openBytes += int64(len(line))
	return j.writeLocked(line)
}

// progress writes r's usage so far, if r's request is open. r is read, not
// kept.
func (j *journal) progress(r *metering.Record) error {
	e := *r
	interruptedRecord(&e)
	j.mu.Lock()
	defer j.mu.Unlock()
	o, ok := j.open[r.RequestID]
	if !ok || j.closed {
		return nil
	}
	n := len(o.progress)
	sb := journalScratch.Get().(*[]byte)
	enc, err := appendJournalLine((*sb)[:0], `{"progress":`, &e)
	if err != nil {
		putScratch(sb, nil)
		return err
	}
	// Into the previous progress line's buffer if it fits, else one of
	// the new line's size.
	var line []byte
	if cap(o.progress) >= len(enc) {
		line = append(o.progress[:0], enc...)
	} else {
		line = bytes.Clone(enc)
	}
	putScratch(sb, enc)
	o.progress = line
	j.open[r.RequestID] = o
	j.openBytes += int64(len(line) - n)
	return j.writeLocked(line)
}

// end notes that id's record is in the spool; its end line is written by
// the next tick (takeEnds, writeEnds).
func (j *journal) end(id string) {
	j.mu.Lock()
	if _, ok := j.open[id]; ok && !j.closed {
		j.ends = append(j.ends, id)
	}
	j.mu.Unlock()
}

// takeEnds returns the ids ended so far. The caller makes their spool
// lines durable, then passes them to writeEnds.
func (j *journal) takeEnds() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	e := j.ends
	j.ends, j.spare = j.spare[:0], nil
	return e
}

// writeEnds appends the end lines of ids in one write, closes them, and
// compacts the journal when due.
func (j *journal) writeEnds(ids []string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.writeEndsLocked(ids)
}

func (j *journal) writeEndsLocked(ids []string) error {
	// j.buf is the compaction's while this one is in use.
	buf := j.buf[:0]
	j.buf = nil
	for _, id := range ids {
		if o, ok := j.open[id]; ok {
			buf = appendJournalEnd(buf, id)
			delete(j.open, id)
			j.openBytes -= int64(len(o.start) + len(o.progress))
		}
	}
	clear(ids)
	if j.spare == nil {
		j.spare = ids[:0]
	}
	var err error
	if len(buf) > 0 && !j.closed {
		err = j.writeLocked(buf)
	}
	if cap(buf) <= 64<<10 {
		j.buf = buf[:0]
	} else {
		j.buf = nil
	}
	if !j.closed && j.size >= j.compactAt && j.size >= 2*j.openBytes {
		err = errors.Join(err, j.rotateLocked())
	}
	return err
}

// writeLocked appends p to the active file. After a failed write the file
// may end in a torn line, so the next write starts a new file first.
func (j *journal) writeLocked(p []byte) error {
	if j.broken {
		if err := j.rotateLocked(); err != nil {
			return err
		}
		// The new file starts with every open line, p's too if it is a
		// start or progress line; writing it again repeats a state, which
		// replay takes as it was.
	}
	n, err := j.f.Write(p)
	j.size += int64(n)
	j.dirty = true
	if err != nil {
		j.broken = true
		return fmt.Errorf("metering journal write %s: %w", j.path, err)
	}
	return nil
}

// rotateLocked starts the next file with the open requests' lines; the
// current one is deleted once the new one is synced (sync).
func (j *journal) rotateLocked() error {
	path := filepath.Join(j.dir, journalName(j.seq+1))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("metering journal: %w", err)
	}
	buf := j.buf[:0]
	for _, o := range j.open {
		buf = append(append(buf, o.start...), o.progress...)
	}
	n, err := f.Write(buf)
	if cap(buf) <= 64<<10 {
		j.buf = buf[:0]
	} else {
		j.buf = nil
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("metering journal write %s: %w", path, err)
	}
	if j.f != nil {
		// Not synced: the lines that matter are in the new file, and the
		// old one stays until that is synced.
		j.f.Close()
		j.superseded = append(j.superseded, j.path)
	}
	j.f, j.path, j.size = f, path, int64(n)
	j.seq++
	j.broken = false
	j.dirty = true
	return nil
}

// sync fsyncs the active file if written, then deletes the files it
// superseded.
func (j *journal) sync() error {
	j.mu.Lock()
	f, dirty, sup := j.f, j.dirty, j.superseded
	j.dirty, j.superseded = false, nil
	j.mu.Unlock()
	var err error
	if dirty && f != nil {
		err = f.Sync()
	}
	if err == nil && len(sup) > 0 {
		// The new file's directory entry must be durable before the
		// old file goes.
		err = spoolSyncDir(j.dir)
	}
	if err != nil {
		// Closed by a compaction since (its successor is not synced yet),
		// or failed: retry all of it at the next tick.
		j.mu.Lock()
		j.dirty = true
		j.superseded = append(sup, j.superseded...)
		j.mu.Unlock()
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		return fmt.Errorf("metering journal sync: %w", err)
	}
	return removeFiles(sup)
}

// interrupted returns the records of the requests earlier processes left
// open; ok is false once they are settled (or there were no files).
func (j *journal) interrupted() (recs []*metering.Record, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.pending, len(j.old) > 0
}

// settled deletes the earlier processes' files: their records are in the
// store.
func (j *journal) settled() error {
	j.mu.Lock()
	old := j.old
	j.old, j.pending = nil, nil
	j.mu.Unlock()
	return removeFiles(old)
}

// close writes the last ends and closes the journal. With no request left
// open, this process's files are deleted; otherwise they stay for the next
// start to record as interrupted. Earlier processes' files stay unless
// settled.
func (j *journal) close(ends []string) error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	err := j.writeEndsLocked(append(ends, j.ends...))
	j.closed = true
	j.ends = nil
	f, path, sup, empty := j.f, j.path, j.superseded, len(j.open) == 0
	j.f, j.superseded = nil, nil
	j.mu.Unlock()
	if f == nil {
		return err
	}
	if serr := f.Sync(); serr != nil {
		err = errors.Join(err, serr)
	}
	err = errors.Join(err, f.Close())
	if err != nil {
		return fmt.Errorf("metering journal close: %w", err)
	}
	if empty {
		sup = append(sup, path)
	} else if err := spoolSyncDir(j.dir); err != nil {
		return fmt.Errorf("metering journal close: %w", err)
	}
	return removeFiles(sup)
}
