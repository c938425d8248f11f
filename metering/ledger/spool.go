package ledger

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/tollgate/tollgate/metering"
)

// The spool is a directory of append-only segment files, one JSON record per
// line, each line prefixed by the CRC-32C of its JSON so a torn or corrupted
// line is recognised instead of half-parsed:
//
//	1a2b3c4d {"request_id":"…",…}\n
//
// Record appends to the active segment with one write(2) before it returns,
// so a record is in the kernel's page cache — safe from kill -9 — as soon as
// Record returns; fsync runs in groups (spoolSync) so power-loss safety lags
// by at most the sync interval. A segment is deleted only once every record
// in it is committed to the store.
const (
	spoolPrefix = "usage-"
	spoolSuffix = ".spool"
	spoolBad    = ".bad"
	spoolLock   = "spool.lock"
	// maxSpoolLine bounds one spool line on replay. A record is about 1 KiB;
	// anything near this size is corruption, not a record.
	maxSpoolLine = 1 << 20
	// spoolCRCLen is the hex CRC plus its separating space.
	spoolCRCLen = 9
)

var spoolCRC = crc32.MakeTable(crc32.Castagnoli)

// errSpoolFull is returned by append when the spool reached MaxSpoolBytes.
var errSpoolFull = errors.New("metering spool full")

// errSpoolClosed is returned by append after close.
var errSpoolClosed = errors.New("metering spool closed")

// spoolSeg is one segment file. Fields are guarded by spool.mu.
type spoolSeg struct {
	seq  uint64
	path string
	f    *os.File // nil once sealed
	size int64
	// written and committed count this process's appends and the ones the
	// writer committed from the queue; a sealed segment with committed ==
	// written and no replay flag is done.
	written   int
	committed int
	// committedBytes is the size of the committed lines, so the backlog
	// (size - committedBytes) is exact and not the segment's fill.
	committedBytes int64
	// replay says some record of the segment never went through the queue
	// (a spill, or a previous process wrote it): the segment must be read
	// back from disk before it can be deleted.
	replay bool
	// broken is set when a write failed part-way; the next append rotates so
	// later lines do not follow a torn one.
	broken bool
}

// spool owns the segment files of one directory.
type spool struct {
	dir      string
	segBytes int64
	maxBytes int64
	lock     *os.File
	// beforeDelete, if set, runs before committed segments are deleted and
	// must make their records durable in the store (Writer sets it from
	// Store.Durable); if it fails nothing is deleted.
	beforeDelete func() error

	mu      sync.Mutex
	segs    map[uint64]*spoolSeg
	active  *spoolSeg
	nextSeq uint64
	// oldMax is the highest sequence number a previous process left.
	oldMax   uint64
	total    int64  // bytes of all segment files
	appended uint64 // lines appended, for group commit
	closed   bool

	// syncMu guards syncing and syncCond (group commit, see syncTo); synced
	// is the highest line known to be on stable storage.
	syncMu   sync.Mutex
	syncCond *sync.Cond
	syncing  bool
	synced   atomic.Uint64
}

// openSpool locks dir and registers the segments a previous process left
// there for replay. New segments get higher sequence numbers.
func openSpool(dir string, segBytes, maxBytes int64) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("metering spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, spoolLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("metering spool: %w", err)
	}
	if err := spoolLockFile(lock); err != nil {
		lock.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrSpoolLocked, dir, err)
	}
	s := &spool{dir: dir, segBytes: segBytes, maxBytes: maxBytes, lock: lock, segs: map[uint64]*spoolSeg{}, nextSeq: 1}
	s.syncCond = sync.NewCond(&s.syncMu)
	ents, err := os.ReadDir(dir)
	if err != nil {
		s.release()
		return nil, fmt.Errorf("metering spool: %w", err)
	}
	for _, e := range ents {
		seq, ok := parseSpoolName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			s.release()
			return nil, fmt.Errorf("metering spool: %w", err)
		}
		s.segs[seq] = &spoolSeg{seq: seq, path: filepath.Join(dir, e.Name()), size: info.Size(), replay: true}
		s.total += info.Size()
		if seq >= s.nextSeq {
			s.nextSeq = seq + 1
		}
	}
	s.oldMax = s.nextSeq - 1
	return s, nil
}

// oldLeft says segments a previous process left are still to be replayed.
func (s *spool) oldLeft() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for seq := range s.segs {
		if seq <= s.oldMax {
			return true
		}
	}
	return false
}

func spoolName(seq uint64) string {
	return fmt.Sprintf("%s%016x%s", spoolPrefix, seq, spoolSuffix)
}

func parseSpoolName(name string) (uint64, bool) {
	return parseSeqName(name, spoolPrefix, spoolSuffix)
}

// parseSeqName reads the hex sequence number of a prefix<seq>suffix file.
func parseSeqName(name, prefix, suffix string) (uint64, bool) {
	if !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
		return 0, false
	}
	seq, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, prefix), suffix), 16, 64)
	return seq, err == nil && seq > 0
}

// appendSpoolLine appends r's spool line to dst. The JSON is byte for byte
// what encoding/json (without HTML escaping) makes of r, written by hand:
// encoding/json's reflection was over half of Record's CPU under load.
// decodeSpoolLine still uses encoding/json, so lines written before the
// change replay as before.
func appendSpoolLine(dst []byte, r *metering.Record) ([]byte, error) {
	n0 := len(dst)
	dst = append(dst, "00000000 "...)
	dst, err := appendRecordJSON(dst, r)
	if err != nil {
		return nil, err
	}
	return sealLine(dst, n0), nil
}

// sealLine ends the line started at dst[n0] (a "00000000 " placeholder,
// then JSON) with its newline and fills in the JSON's checksum.
func sealLine(dst []byte, n0 int) []byte {
	line := dst[n0:]
	c := crc32.Checksum(line[spoolCRCLen:], spoolCRC)
	sum := [4]byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)}
	hex.Encode(line[:8], sum[:])
	return append(dst, '\n')
}

// appendRecordJSON appends r's JSON object (appendSpoolLine).
func appendRecordJSON(dst []byte, r *metering.Record) ([]byte, error) {
	dst = appendJSONStringField(dst, `{"request_id":`, r.RequestID)
	dst = append(dst, `,"start":"`...)
	// AppendText is time.Time.MarshalJSON without the quotes and, like it,
	// fails for a year outside [0,9999].
	dst, err := r.Start.AppendText(dst)
	if err != nil {
		return nil, fmt.Errorf("metering spool: start: %w", err)
	}
	dst = append(dst, '"')
	dst = appendJSONIntField(dst, `,"duration_ns":`, int64(r.Duration))
	dst = appendJSONIntField(dst, `,"ttfb_ns":`, int64(r.TTFB))
	dst = appendJSONStringField(dst, `,"workspace":`, r.Workspace)
	dst = appendJSONStringField(dst, `,"project":`, r.Project)
	dst = appendJSONStringField(dst, `,"user":`, r.User)
	dst = appendJSONStringField(dst, `,"token_id":`, r.TokenID)
	if r.Session != "" {
		dst = appendJSONStringField(dst, `,"session":`, r.Session)
	}
	dst = appendJSONStringField(dst, `,"harness":`, r.Harness)
	dst = appendJSONStringField(dst, `,"dialect":`, r.Dialect)
	dst = appendJSONStringField(dst, `,"operation":`, r.Operation)
	dst = appendJSONStringField(dst, `,"path":`, r.Path)
	dst = appendJSONStringField(dst, `,"provider":`, r.Provider)
	dst = appendJSONStringField(dst, `,"credential_tier":`, r.CredTier)
	dst = appendJSONStringField(dst, `,"credential_id":`, r.CredentialID)
	dst = strconv.AppendBool(append(dst, `,"stream":`...), r.Stream)
	dst = appendJSONStringField(dst, `,"model_requested":`, r.ModelRequest)
	if r.ModelSent != "" {
		dst = appendJSONStringField(dst, `,"model_sent":`, r.ModelSent)
	}
	dst = appendJSONStringField(dst, `,"model_served":`, r.ModelServed)
	dst = appendJSONStringField(dst, `,"upstream_id":`, r.UpstreamID)
	if r.ServiceTier != "" {
		dst = appendJSONStringField(dst, `,"service_tier":`, r.ServiceTier)
	}
	dst = appendJSONIntField(dst, `,"status":`, int64(r.Status))
	dst = appendJSONStringField(dst, `,"outcome":`, r.Outcome)
	dst = appendJSONStringField(dst, `,"usage_source":`, r.Source)
	dst = strconv.AppendBool(append(dst, `,"usage_injected":`...), r.Injected)
	if r.EventOverflow {
		dst = append(dst, `,"event_overflow":true`...)
	}
	if u := r.Usage; u == nil {
		dst = append(dst, `,"usage":null`...)
	} else {
		for i, b := range metering.Buckets {
			if b.Tool != "" && *b.Of(u) == 0 {
				continue // omitempty, as in Usage's JSON
			}
			dst = append(dst, bucketKeys[i]...)
			dst = strconv.AppendInt(dst, *b.Of(u), 10)
		}
		dst = append(dst, '}')
	}
	if r.CostMicroUSD == nil {
		dst = append(dst, `,"cost_micro_usd":null`...)
	} else {
		dst = appendJSONIntField(dst, `,"cost_micro_usd":`, *r.CostMicroUSD)
	}
	if r.Unpriced {
		dst = append(dst, `,"unpriced":true`...)
	}
	dst = appendJSONStringField(dst, `,"price_version":`, r.PriceVersion)
	dst = appendJSONIntField(dst, `,"bytes_out":`, r.BytesOut)
	// reserved is what makes a replayed record settle its reservation.
	if r.Reserved {
		dst = append(dst, `,"reserved":true`...)
	}
	if r.ReservedMicroUSD != 0 {
		dst = appendJSONIntField(dst, `,"reserved_micro_usd":`, r.ReservedMicroUSD)
	}
	if r.Governance != "" {
		dst = appendJSONStringField(dst, `,"governance":`, r.Governance)
	}
	// allotted is what makes a replayed record settle its allotment holds.
	for i, h := range r.Allotted {
		key := `,{"allotment":`
		if i == 0 {
			key = `,"allotted":[{"allotment":`
		}
		dst = appendJSONStringField(dst, key, h.Allotment)
		dst = append(appendJSONIntField(dst, `,"amount":`, h.Amount), '}')
		if i == len(r.Allotted)-1 {
			dst = append(dst, ']')
		}
	}
	if len(r.Attempts) > 0 {
		dst = appendAttemptsJSON(append(dst, `,"attempts":`...), r.Attempts)
	}
	return append(dst, '}'), nil
}

// appendAttemptsJSON appends as as encoding/json would (without HTML
// escaping): the spool's "attempts" value and the attempts column.
func appendAttemptsJSON(dst []byte, as []metering.Attempt) []byte {
	dst = append(dst, '[')
	for i, a := range as {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONStringField(dst, `{"credential_id":`, a.CredentialID)
		dst = appendJSONStringField(dst, `,"provider":`, a.Provider)
		dst = appendJSONIntField(dst, `,"status":`, int64(a.Status))
		if a.Error != "" {
			dst = appendJSONStringField(dst, `,"error":`, a.Error)
		}
		dst = appendJSONIntField(dst, `,"duration_ns":`, int64(a.Duration))
		if a.MayBill {
			dst = append(dst, `,"may_bill":true`...)
		}
		dst = append(dst, '}')
	}
	return append(dst, ']')
}

// bucketKeys are the usage object's keys with their punctuation, the
// first opening the object.
var bucketKeys = func() (keys [len(metering.Buckets)]string) {
	for i, b := range metering.Buckets {
		keys[i] = `,"` + b.Name + `":`
	}
	keys[0] = `,"usage":{"` + metering.Buckets[0].Name + `":`
	return keys
}()

// appendJSONIntField appends key, which carries its punctuation, and v.
func appendJSONIntField(dst []byte, key string, v int64) []byte {
	return strconv.AppendInt(append(dst, key...), v, 10)
}

// appendJSONStringField appends key, which carries its punctuation, and v.
func appendJSONStringField(dst []byte, key, v string) []byte {
	return appendJSONString(append(dst, key...), v)
}

// appendJSONString appends s as a JSON string the way encoding/json does
// without HTML escaping: invalid UTF-8 becomes U+FFFD, and U+2028 and
// U+2029 are escaped for JavaScript's sake.
func appendJSONString(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case c == '\u2028' || c == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// decodeSpoolLine parses one line without its '\n'.
func decodeSpoolLine(line []byte) (*metering.Record, error) {
	payload, err := checkedLine(line)
	if err != nil {
		return nil, err
	}
	r := new(metering.Record)
	if err := json.Unmarshal(payload, r); err != nil {
		return nil, err
	}
	if r.RequestID == "" {
		return nil, errors.New("record without request id")
	}
	return r, nil
}

// checkedLine returns the JSON of a line (without its '\n') whose checksum
// matches.
func checkedLine(line []byte) ([]byte, error) {
	if len(line) < spoolCRCLen+2 || line[8] != ' ' {
		return nil, errors.New("short line")
	}
	var sum [4]byte
	if _, err := hex.Decode(sum[:], line[:8]); err != nil {
		return nil, errors.New("bad checksum field")
	}
	want := uint32(sum[0])<<24 | uint32(sum[1])<<16 | uint32(sum[2])<<8 | uint32(sum[3])
	if crc32.Checksum(line[spoolCRCLen:], spoolCRC) != want {
		return nil, errors.New("checksum mismatch")
	}
	return line[spoolCRCLen:], nil
}

// append writes line to the active segment and returns the segment's
// sequence number and the line's global number (for syncTo).
func (s *spool) append(line []byte) (seq, lineNo uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, 0, errSpoolClosed
	}
	if s.total+int64(len(line)) > s.maxBytes {
		return 0, 0, errSpoolFull
	}
	if a := s.active; a == nil || a.broken || a.size >= s.segBytes {
		if err := s.rotateLocked(); err != nil {
			return 0, 0, err
		}
	}
	a := s.active
	n, err := a.f.Write(line)
	a.size += int64(n)
	s.total += int64(n)
	if err != nil {
		a.broken = true
		return 0, 0, fmt.Errorf("metering spool write %s: %w", a.path, err)
	}
	a.written++
	s.appended++
	return a.seq, s.appended, nil
}

// rotateLocked seals the active segment and opens the next one. Sealing
// fsyncs the file, so every line before the rotation is durable and syncTo
// only ever has to fsync the active file.
func (s *spool) rotateLocked() error {
	if err := s.sealLocked(); err != nil {
		return err
	}
	seg := &spoolSeg{seq: s.nextSeq, path: filepath.Join(s.dir, spoolName(s.nextSeq))}
	f, err := os.OpenFile(seg.path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("metering spool: %w", err)
	}
	// The new file's directory entry must survive a power loss too.
	if err := spoolSyncDir(s.dir); err != nil {
		f.Close()
		os.Remove(seg.path)
		return fmt.Errorf("metering spool: %w", err)
	}
	seg.f = f
	s.nextSeq++
	s.segs[seg.seq] = seg
	s.active = seg
	return nil
}

func (s *spool) sealLocked() error {
	a := s.active
	if a == nil {
		return nil
	}
	s.active = nil
	err := a.f.Sync()
	if cerr := a.f.Close(); err == nil {
		err = cerr
	}
	a.f = nil
	if err != nil {
		// The lines are written but maybe not durable; keep them for replay
		// rather than trusting the queue accounting alone.
		a.replay = true
		return fmt.Errorf("metering spool seal %s: %w", a.path, err)
	}
	return nil
}

// markSpilled flags seq for replay: one of its records is not in the queue.
func (s *spool) markSpilled(seq uint64) {
	s.mu.Lock()
	if g := s.segs[seq]; g != nil {
		g.replay = true
	}
	s.mu.Unlock()
}

// segCommit is what one batch committed of one segment.
type segCommit struct {
	records int
	bytes   int64
}

// commit credits records committed from the queue to their segments and
// deletes the segments that are sealed and fully committed.
func (s *spool) commit(counts map[uint64]segCommit) []error {
	s.mu.Lock()
	done := false
	for seq, c := range counts {
		if g := s.segs[seq]; g != nil {
			g.committed += c.records
			g.committedBytes += c.bytes
		}
	}
	for _, g := range s.segs {
		done = done || segDone(g)
	}
	s.mu.Unlock()
	if !done {
		return nil
	}
	// Outside the lock: Record appends while the store syncs.
	if err := s.durable(); err != nil {
		return []error{err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.collectLocked()
}

func (s *spool) durable() error {
	if s.beforeDelete == nil {
		return nil
	}
	if err := s.beforeDelete(); err != nil {
		return fmt.Errorf("metering spool: store not synced, segments kept: %w", err)
	}
	return nil
}

// segDone says every record of a sealed segment is committed.
func segDone(g *spoolSeg) bool {
	return g.f == nil && !g.replay && g.committed >= g.written
}

func (s *spool) collectLocked() []error {
	var errs []error
	for seq, g := range s.segs {
		if !segDone(g) {
			continue
		}
		if err := os.Remove(g.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		s.total -= g.size
		delete(s.segs, seq)
	}
	return errs
}

// sealForReplay seals the active segment if it holds spilled records, so the
// writer can read it back.
func (s *spool) sealForReplay() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active != nil && s.active.replay {
		return s.sealLocked()
	}
	return nil
}

// nextReplay returns the oldest sealed segment flagged for replay.
func (s *spool) nextReplay() (seq uint64, path string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for q, g := range s.segs {
		if g.replay && g.f == nil && (!ok || q < seq) {
			seq, path, ok = q, g.path, true
		}
	}
	return seq, path, ok
}

// replayed removes a segment whose every readable record is committed. A
// segment with corrupt lines (not a torn tail) is kept as *.bad for a human.
func (s *spool) replayed(seq uint64, keep bool) error {
	if !keep {
		if err := s.durable(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.segs[seq]
	if g == nil {
		return nil
	}
	var err error
	if keep {
		err = os.Rename(g.path, g.path+spoolBad)
	} else {
		err = os.Remove(g.path)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("metering spool: %w", err)
	}
	s.total -= g.size
	delete(s.segs, seq)
	return nil
}

// syncTo returns once line lineNo is on stable storage. It is a group
// commit: one caller at a time fsyncs everything appended so far, without
// holding syncMu, and the others wait on syncCond and return as soon as an
// fsync covered their line. (Holding a mutex across the fsync made callers
// whose line was already covered queue behind the next fsync: one fsync
// per record.)
func (s *spool) syncTo(lineNo uint64) error {
	if s.synced.Load() >= lineNo {
		return nil
	}
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	for s.synced.Load() < lineNo {
		if s.syncing {
			s.syncCond.Wait()
			continue
		}
		s.syncing = true
		s.syncMu.Unlock()
		s.mu.Lock()
		upto := s.appended
		var f *os.File
		if s.active != nil {
			f = s.active.f
		}
		s.mu.Unlock()
		var err error
		if f != nil {
			// A rotation may close f under us; it fsyncs before closing,
			// so ErrClosed means the lines are already durable.
			if err = f.Sync(); errors.Is(err, os.ErrClosed) {
				err = nil
			}
		}
		s.syncMu.Lock()
		s.syncing = false
		if err == nil && upto > s.synced.Load() {
			s.synced.Store(upto)
		}
		s.syncCond.Broadcast()
		if err != nil {
			return fmt.Errorf("metering spool sync: %w", err)
		}
	}
	return nil
}

// syncAll fsyncs everything appended so far.
func (s *spool) syncAll() error {
	s.mu.Lock()
	n := s.appended
	s.mu.Unlock()
	return s.syncTo(n)
}

// stats reports the spool's bytes on disk, the bytes of records not yet in
// the store (the backlog), and the segment count. A committed record stays
// on disk until its segment is sealed and deleted, so the bytes on disk
// climb toward the segment size with nothing waiting; the backlog does not.
// A segment to be read back (a spill, or left by an earlier process) counts
// whole: which of its records the store holds is known only once replayed.
func (s *spool) stats() (bytes, backlog int64, segments int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.segs {
		if g.replay {
			backlog += g.size
		} else {
			backlog += max(0, g.size-g.committedBytes)
		}
	}
	return s.total, backlog, len(s.segs)
}

// close seals the active segment, deletes the segments fully committed and
// releases the directory. Later appends fail with errSpoolClosed.
func (s *spool) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.sealLocked()
	s.mu.Unlock()
	// The writer has committed its last batch: sync the store before any
	// segment goes.
	derr := s.durable()
	var errs []error
	if derr == nil {
		s.mu.Lock()
		errs = s.collectLocked()
		s.mu.Unlock()
	}
	s.release()
	return errors.Join(append(errs, err, derr)...)
}

func (s *spool) release() {
	spoolUnlockFile(s.lock)
	s.lock.Close()
}

// spoolReplayStats counts what one segment replay found.
type spoolReplayStats struct {
	records int
	torn    int // an unterminated last line: a crash mid-append
	corrupt int // complete lines that fail the checksum or do not parse
}

// readSpool streams the records of one segment file to fn in chunks of at
// most batch records. A torn last line is counted and skipped; so is a
// corrupt complete line. fn's error stops the read.
func readSpool(path string, batch int, fn func([]*metering.Record) error, onBad func(offset int64, torn bool, err error)) (spoolReplayStats, error) {
	var st spoolReplayStats
	f, err := os.Open(path)
	if err != nil {
		return st, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	recs := make([]*metering.Record, 0, batch)
	var off int64
	for {
		line, n, err := readSpoolLine(br)
		start := off
		off += n
		if errors.Is(err, io.EOF) {
			if n > 0 {
				st.torn++
				onBad(start, true, errors.New("unterminated last line"))
			}
			break
		}
		if errors.Is(err, errLineTooLong) {
			st.corrupt++
			onBad(start, false, err)
			continue
		}
		if err != nil {
			return st, err
		}
		r, derr := decodeSpoolLine(line[:len(line)-1])
		if derr != nil {
			st.corrupt++
			onBad(start, false, derr)
			continue
		}
		recs = append(recs, r)
		st.records++
		if len(recs) == batch {
			if err := fn(recs); err != nil {
				return st, err
			}
			recs = make([]*metering.Record, 0, batch)
		}
	}
	if len(recs) > 0 {
		if err := fn(recs); err != nil {
			return st, err
		}
	}
	return st, nil
}

var errLineTooLong = errors.New("spool line too long")

// readSpoolLine returns the next line with its '\n' and the bytes it
// consumed, or io.EOF with the count of an unterminated rest. A line longer
// than maxSpoolLine is consumed whole and reported as errLineTooLong.
func readSpoolLine(br *bufio.Reader) ([]byte, int64, error) {
	var line []byte
	var n int64
	tooLong := false
	for {
		frag, err := br.ReadSlice('\n')
		n += int64(len(frag))
		if !tooLong {
			if len(line)+len(frag) > maxSpoolLine {
				tooLong, line = true, nil
			} else {
				line = append(line, frag...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLong && err == nil {
			return nil, n, errLineTooLong
		}
		return line, n, err
	}
}
