package governance

import (
	"context"
	"errors"
	"time"
)

// Quota leasing: the Redis limiter's allotments (governance.md §4.3's
// replica allotment applied to the rate limits of §5, like Google's
// Doorman). A script call per request costs tollgate a round trip and tens
// of µs of CPU; under a big limit a replica instead takes a batch from the
// shared bucket in one call and admits from it in memory.
//
//   - A batch is taken as that many requests (RPM) or tokens (TPM) would be
//     admitted at once: the TAT moves by batch × interval, and only as far
//     as the limit's own rule allows (the burst for RPM, a full bucket for
//     TPM), so whatever the replicas hold, the shared bucket admitted.
//   - Its size adapts: min(limit / (replicas × leaseShare), twice what this
//     replica used in the last leaseWindow), at most the RPM burst, and no
//     batch at all below leaseMinRequests requests' worth. Small limits
//     (RPM 60 on three replicas, a TPM of a few dozen requests a minute)
//     therefore stay exact per request, and so does a cold replica.
//   - A batch below half is topped up to its size in the background, one
//     refill per key at a time; a request that finds too little left goes
//     to Redis as before, for that part, with the rest of the request
//     still served locally (and given back if Redis refuses: all or
//     nothing holds).
//   - What a batch still holds after leaseIdle without use (or past a
//     shrunk size, or on Close) goes back to the shared bucket.
//
// Bounds. A replica holds at most one batch per key, so a period admits at
// most what GCRA alone would plus what the replicas held when it started:
// limit + burst − 1 + limit/leaseShare with every replica counting the
// live replicas right (12.5% of the limit, and only for limits of at least
// leaseMinRequests × replicas × leaseShare requests). A replica that
// crashes loses what it held, at most one batch a key: the shared bucket
// refills it in period / (replicas × leaseShare), 2.5 s at three replicas.
// A refusal's remaining is what Redis has left: batches held count as used.
//
// TPM corrections (Release's refund or debt) settle against the batch when
// one is held; otherwise they are owed to Redis and sent with this
// replica's next script call for the key (applied before its check) or by
// the flush every leaseFlush, whichever comes first: debt delays other
// replicas' requests at most leaseFlush later than it used to.
const (
	leaseShare       = 8
	leaseMinRequests = 4
	leaseWindow      = time.Second
	leaseIdle        = 1500 * time.Millisecond
	leaseFlush       = 50 * time.Millisecond
	// leaseBackoff is how long a key whose refill got nothing (the shared
	// bucket is near its limit) goes without asking again: there, every
	// request goes through the per-request script, exact.
	leaseBackoff = 100 * time.Millisecond
	// leaseSweep is how long an unused key's state is kept.
	leaseSweep = 10 * time.Second
	// syncBatch bounds the keys of one sync call.
	syncBatch = 256
)

// leaseBucket is one key's (a limit's RPM or its TPM) state on this
// replica. Units are requests for RPM and tokens for TPM.
type leaseBucket struct {
	kind         limitKind
	key          string // the TAT's Redis key
	limit, burst int64
	// have is what the held batch has left (≥ 0); size is the batch the
	// replica aims to hold, 0 while not leasing.
	have, size int64
	// owe is TPM charged (+) or refunded (−) here and not yet in Redis;
	// sending what of it the sync call in flight carries.
	owe, sending int64
	refill       bool  // a refill is asked for or in flight
	quietUntil   int64 // no refill before (unix ns): the last one got nothing
	lastUse      int64
	// Use in the current and the previous leaseWindow: units and requests.
	winStart                     int64
	cur, curReqs, prev, prevReqs int64
}

// leaseEntry is one limit's state.
type leaseEntry struct {
	clock    string
	rpm, tpm leaseBucket
	// inflight counts permits that will settle TPM here: the entry is not
	// forgotten under them.
	inflight int
}

// taken is what a request got from local batches: bit i of rpm or tpm for
// limit i's part (limits past 64 are never served locally), and whether
// that was every rate part the request needs.
type taken struct {
	rpm, tpm uint64
	all      bool
}

func (t taken) has(set uint64, i int) bool { return i < 64 && set&(1<<i) != 0 }

// entry returns l's state, made on first sight, with l's current values.
// Called with r.lmu held.
func (r *RedisLimiter) entry(l Limit) *leaseEntry {
	e := r.entries[limitKey(l)]
	if e == nil {
		base := r.keyBase(l)
		e = &leaseEntry{clock: base + "clock"}
		e.rpm.kind, e.rpm.key = kindRPM, base+"rpm"
		e.tpm.kind, e.tpm.key = kindTPM, base+"tpm"
		r.entries[limitKey(l)] = e
		r.startSync()
	}
	if l.RPM > 0 {
		e.rpm.limit, e.rpm.burst = l.RPM, rpmBurst(l.RPM)
	}
	if l.TPM > 0 {
		e.tpm.limit = l.TPM
	}
	return e
}

// takeLocal serves what it can of a request from the batches held here.
// With final (nothing else to check, no concurrency slot) and everything
// served, the request is admitted here and its TPM entries are returned.
func (r *RedisLimiter) takeLocal(limits []Limit, tokens int64, final bool) (taken, []*leaseEntry) {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	now := r.now().UnixNano()
	t := taken{all: true}
	for i, l := range limits {
		e := r.entry(l)
		if l.RPM > 0 {
			if i < 64 && e.rpm.take(1) {
				t.rpm |= 1 << i
			} else {
				t.all = false
			}
			r.wantRefill(&e.rpm, now)
		}
		if l.TPM > 0 {
			if i < 64 && e.tpm.take(tokens) {
				t.tpm |= 1 << i
			} else {
				t.all = false
			}
			r.wantRefill(&e.tpm, now)
		}
	}
	if !final || !t.all {
		return t, nil
	}
	return t, r.admittedLocked(limits, tokens, now)
}

// take spends n from the batch, if it holds that much.
func (b *leaseBucket) take(n int64) bool {
	if b.have <= 0 || b.have < n {
		return false
	}
	b.have -= n
	return true
}

// giveBack returns what takeLocal took for a request that was refused.
func (r *RedisLimiter) giveBack(limits []Limit, tokens int64, t taken) {
	if t.rpm == 0 && t.tpm == 0 {
		return
	}
	r.lmu.Lock()
	defer r.lmu.Unlock()
	for i, l := range limits {
		e := r.entry(l)
		if t.has(t.rpm, i) {
			e.rpm.have++
		}
		if t.has(t.tpm, i) {
			e.tpm.have += tokens
		}
	}
}

// admitted records an admitted request's use (what sizes batches) and
// returns its TPM entries, which its Release settles against.
func (r *RedisLimiter) admitted(limits []Limit, tokens int64) []*leaseEntry {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	return r.admittedLocked(limits, tokens, r.now().UnixNano())
}

func (r *RedisLimiter) admittedLocked(limits []Limit, tokens, now int64) []*leaseEntry {
	var ents []*leaseEntry
	for _, l := range limits {
		e := r.entry(l)
		if l.RPM > 0 {
			r.use(&e.rpm, 1, 1, now)
		}
		if l.TPM > 0 {
			r.use(&e.tpm, tokens, 1, now)
			e.inflight++
			if ents == nil {
				ents = make([]*leaseEntry, 0, len(limits))
			}
			ents = append(ents, e)
		}
	}
	return ents
}

// use counts units (and reqs requests) against b's current window,
// resizing the batch when a window ends.
func (r *RedisLimiter) use(b *leaseBucket, units, reqs, now int64) {
	b.lastUse = now
	if w := int64(r.leaseWindow); now-b.winStart >= w {
		if now-b.winStart < 2*w {
			b.prev, b.prevReqs = b.cur, b.curReqs
		} else {
			b.prev, b.prevReqs = 0, 0
		}
		b.cur, b.curReqs, b.winStart = 0, 0, now
		b.size = r.batchSize(b)
		r.wantRefill(b, now)
	}
	b.cur += units
	b.curReqs += reqs
}

// batchSize is the batch b should hold, from the last window's use; 0
// means each request goes to Redis.
func (r *RedisLimiter) batchSize(b *leaseBucket) int64 {
	replicas := int64(1)
	if r.cfg.Replicas != nil {
		replicas = int64(max(1, r.cfg.Replicas()))
	}
	used := max(0, b.prev)
	k := min(b.limit/(replicas*leaseShare), 2*used)
	switch {
	case b.kind == kindRPM:
		k = min(k, b.burst)
		if k < leaseMinRequests {
			return 0
		}
	case b.prevReqs == 0 || k < leaseMinRequests*(used/b.prevReqs):
		return 0
	}
	return k
}

// wantRefill asks the sync loop for a top-up once b is below half. Not
// while b owes debt: a batch must not be taken from a bucket the debt has
// not reached yet (the next call or flush brings it, then a later request
// asks).
func (r *RedisLimiter) wantRefill(b *leaseBucket, now int64) {
	if b.size == 0 || b.refill || b.owe > 0 || b.have >= (b.size+1)/2 || now < b.quietUntil {
		return
	}
	b.refill = true
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// least is the smallest grant worth a refill: one request, or (TPM) the
// tokens of an average one.
func (b *leaseBucket) least() int64 {
	if b.kind == kindTPM && b.prevReqs > 0 {
		return max(1, b.prev/b.prevReqs)
	}
	return 1
}

// settle applies a released request's TPM correction (actual − estimate,
// tokens) to each of its limits: against the batch while one is held, a
// refund past a whole batch or debt past an empty one owed to Redis;
// owed to Redis outright otherwise.
func (r *RedisLimiter) settle(ents []*leaseEntry, delta int64) {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	now := r.now().UnixNano()
	for _, e := range ents {
		e.inflight--
		if delta == 0 {
			continue
		}
		b := &e.tpm
		b.cur += delta
		if b.size == 0 {
			b.owe += delta
			continue
		}
		b.have -= delta
		if b.have < 0 {
			b.owe -= b.have
			b.have = 0
		} else if b.have > b.size {
			b.owe -= b.have - b.size
			b.have = b.size
		}
		r.wantRefill(b, now)
	}
}

// takeOwes takes what the request's TPM limits owe Redis, to send with its
// script call (ARGV slot per limit; 0 for none). When a sync call in
// flight carries some of a key's debt, it first waits for that call: the
// request must not be checked against a bucket the debt has not reached.
func (r *RedisLimiter) takeOwes(ctx context.Context, limits []Limit) ([]int64, error) {
	for {
		r.lmu.Lock()
		var wait chan struct{}
		for _, l := range limits {
			if l.TPM > 0 && r.entry(l).tpm.sending != 0 {
				wait = r.round
				break
			}
		}
		if wait == nil {
			var owes []int64
			for i, l := range limits {
				if l.TPM == 0 {
					continue
				}
				if b := &r.entry(l).tpm; b.owe != 0 {
					if owes == nil {
						owes = make([]int64, len(limits))
					}
					owes[i], b.owe = b.owe, 0
					if owes[i] > 0 {
						// A refill asked for earlier would race this
						// call's debt: the next request asks again.
						b.refill = false
					}
				}
			}
			r.lmu.Unlock()
			return owes, nil
		}
		r.lmu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// restoreOwes puts back what a failed call was to carry. A call that timed
// out may have run after all: its correction then counts twice, as the
// per-request Release call's was lost or not before (best effort either
// way, bounded by one request's correction).
func (r *RedisLimiter) restoreOwes(limits []Limit, owes []int64) {
	if owes == nil {
		return
	}
	r.lmu.Lock()
	defer r.lmu.Unlock()
	for i, l := range limits {
		if owes[i] != 0 {
			r.entry(l).tpm.owe += owes[i]
		}
	}
}

// syncOp is one key's part of a sync call: a correction (TPM owed, or a
// batch given back, in units: + charges, − returns) and a batch asked for.
type syncOp struct {
	b                  *leaseBucket
	key, clock         string
	kind, limit, burst int64 // b's, read under the lock
	owe, ret           int64
	want, least        int64
}

// startSync starts the sync loop with the first limit seen.
func (r *RedisLimiter) startSync() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.syncing && !r.closed {
		r.syncing = true
		r.wg.Add(1)
		// The background half of leasing: refills when asked, flushes and
		// idle returns every leaseFlush.
		go r.loop(r.leaseFlush, r.kick, func() { r.syncRound(false) })
	}
}

// syncRound sends, in one call, every owed correction, every batch to give
// back and every refill asked for; final (Close) gives every batch back and
// asks for none.
func (r *RedisLimiter) syncRound(final bool) {
	r.roundMu.Lock()
	defer r.roundMu.Unlock()
	if !r.reachable() {
		return
	}
	r.lmu.Lock()
	now := r.now().UnixNano()
	var ops []syncOp
	for k, e := range r.entries {
		queued := len(ops)
		for _, b := range [2]*leaseBucket{&e.rpm, &e.tpm} {
			if b.limit == 0 {
				continue
			}
			op := syncOp{b: b, key: b.key, clock: e.clock, kind: int64(b.kind), limit: b.limit, burst: b.burst, owe: b.owe}
			b.sending, b.owe = b.owe, 0
			idle := final || now-b.lastUse >= int64(r.leaseIdle)
			keep := b.size
			if idle {
				keep = 0
			}
			if b.have > keep {
				op.ret, b.have = b.have-keep, keep
			}
			if b.refill && !idle && b.have < b.size {
				op.want, op.least = b.size-b.have, b.least()
			} else {
				b.refill = false
			}
			if op.owe != 0 || op.ret != 0 || op.want != 0 {
				ops = append(ops, op)
			}
		}
		if len(ops) == queued && e.inflight == 0 && e.rpm.have == 0 && e.tpm.have == 0 &&
			now-max(e.rpm.lastUse, e.tpm.lastUse) >= int64(leaseSweep) {
			delete(r.entries, k)
		}
	}
	if len(ops) == 0 {
		r.lmu.Unlock()
		return
	}
	done := make(chan struct{})
	r.round = done
	r.lmu.Unlock()

	grants, landed, err := r.runSync(ops)

	r.lmu.Lock()
	now = r.now().UnixNano()
	for i, op := range ops {
		b := op.b
		b.sending = 0
		switch {
		case i >= landed: // not sent: still owed, still held
			b.owe += op.owe
			b.have += op.ret
			b.refill = false
		case op.want > 0:
			b.have += grants[i]
			b.refill = false
			if grants[i] < op.want {
				b.quietUntil = now + int64(r.leaseBackoff)
			}
		}
	}
	r.round = nil
	close(done)
	r.lmu.Unlock()
	if err != nil {
		r.down(err)
		return
	}
	r.up()
}

// runSync runs the sync script over ops, syncBatch keys a call, and
// returns each op's grant and how many ops reached Redis: after a failed
// call, the calls already made stand and only the rest is kept to send
// again, so nothing is sent twice.
func (r *RedisLimiter) runSync(ops []syncOp) ([]int64, int, error) {
	grants := make([]int64, 0, len(ops))
	for i := 0; i < len(ops); i += syncBatch {
		part := ops[i:min(i+syncBatch, len(ops))]
		keys := make([]string, 0, 2*len(part))
		args := make([]any, 0, 1+6*len(part))
		args = append(args, r.period.Microseconds())
		for _, op := range part {
			keys = append(keys, op.key, op.clock)
			args = append(args, op.kind, op.limit, op.burst, op.owe-op.ret, op.want, op.least)
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
		got, err := syncScript.Run(ctx, r.rdb, keys, args...).Int64Slice()
		cancel()
		if err == nil && len(got) != len(part) {
			err = errors.New("rate limit sync script: unexpected answer")
		}
		if err != nil {
			return grants, i, err
		}
		grants = append(grants, got...)
	}
	return grants, len(ops), nil
}
