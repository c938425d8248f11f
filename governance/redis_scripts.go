package governance

import "github.com/redis/go-redis/v9"

// The scripts keep time in Redis-clock microseconds (TIME), never a
// replica's clock, so replicas whose clocks disagree still share one
// bucket. Numbers go back to Redis through string.format: Lua 5.1's
// tostring keeps 14 digits, which would cut a microsecond timestamp.

// redisNow starts a script that keeps limits: now is Redis's TIME, clamped
// to the latest time any of the call's limits has seen (so a clock that
// steps back cannot refill a bucket), and n the number of limits. The
// script sets stride first: KEYS per limit, the clock key last.
const redisNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS / stride
for i = 1, n do
  local seen = tonumber(redis.call('GET', KEYS[i * stride]))
  if seen ~= nil and seen > now then now = seen end
end
`

// acquireScript checks every limit of one request and consumes from all
// of them, or from none. Parts this replica served from its leased
// batches are left out (rpm 0, check 0); what it owes a TPM bucket is
// applied first, admitted or not.
//
// KEYS, four per limit: rpm, tpm, conc, clock.
// ARGV: member (request id), tokens, period µs, lease µs; then six per
// limit: rpm, burst, tpm, concurrency (0 = not limited), 1 to check the
// tokens against tpm, tokens owed (+ debt, − refund).
// Answer: {1} admitted, or {0, limit index (0-based), kind (1 rpm, 2 tpm,
// 3 concurrency), wait µs, remaining, reset µs} for the limit with the
// longest wait (a concurrency refusal, whose wait nobody knows, only when
// no rate refuses).
var acquireScript = redis.NewScript(`
local stride = 4
` + redisNow + `local member = ARGV[1]
local tokens = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local function num(x) return string.format('%.17g', x) end
local function ms(us) return string.format('%d', math.max(1, math.ceil(us / 1000))) end
local deny = nil
local function refuse(d)
  if deny == nil or (d[2] ~= 3 and (deny[2] == 3 or d[3] > deny[3])) then deny = d end
end
local rpmtat, tpmtat = {}, {}
for i = 0, n - 1 do
  local k, a = i * 4, 4 + i * 6
  local rpm, burst = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local tpm, conc = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local check, owe = ARGV[a + 5] == '1', tonumber(ARGV[a + 6])
  if rpm > 0 then
    local step = period / rpm
    local tat = math.max(tonumber(redis.call('GET', KEYS[k + 1])) or now, now)
    local wait = tat - now - (burst - 1) * step
    if wait > 0 then refuse({i, 1, wait, 0, tat - now}) else rpmtat[i] = tat + step end
  end
  if tpm > 0 then
    local step = period / tpm
    local tat = math.max(tonumber(redis.call('GET', KEYS[k + 2])) or now, now)
    if owe ~= 0 then
      tat = math.max(tat + owe * step, now)
      if tat > now then
        redis.call('SET', KEYS[k + 2], num(tat), 'PX', ms(math.max(2 * period, tat - now + period)))
      else
        redis.call('DEL', KEYS[k + 2])
      end
    end
    if check then
      local wait = tat + math.min(tokens, tpm) * step - now - period
      if wait > 0 then
        refuse({i, 2, wait, math.floor((now + period - tat) / step), tat - now})
      else
        tpmtat[i] = tat + tokens * step
      end
    end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', num(now))
    if redis.call('ZCARD', KEYS[k + 3]) >= conc and not redis.call('ZSCORE', KEYS[k + 3], member) then
      refuse({i, 3, 0, 0, 0})
    end
  end
end
if deny ~= nil then
  return {0, deny[1], deny[2], math.ceil(deny[3]), math.max(0, deny[4]), math.ceil(deny[5])}
end
for i = 0, n - 1 do
  local k, a = i * 4, 4 + i * 6
  if rpmtat[i] then redis.call('SET', KEYS[k + 1], num(rpmtat[i]), 'PX', ms(2 * period)) end
  if tpmtat[i] then
    redis.call('SET', KEYS[k + 2], num(tpmtat[i]), 'PX', ms(math.max(2 * period, tpmtat[i] - now + period)))
  end
  if tonumber(ARGV[a + 4]) > 0 then
    redis.call('ZADD', KEYS[k + 3], num(now + lease), member)
    redis.call('PEXPIRE', KEYS[k + 3], ms(2 * lease))
  end
  redis.call('SET', KEYS[k + 4], num(now), 'PX', ms(2 * period))
end
return {1}
`)

// syncScript is leasing's one call (lease.go): per key, a correction and
// then a batch. A correction of + units charges the bucket (TPM debt); −
// units give back (a refund, or a batch returned) and stop at a full
// bucket. A batch takes up to want units as admitting that many at once
// would (RPM within the burst, TPM within the bucket), nothing if fewer
// than least fit.
//
// KEYS, two per op: the TAT (rpm or tpm), the limit's clock.
// ARGV: period µs; then six per op: kind (1 rpm, 2 tpm), limit, burst,
// correction, want, least.
// Answer: the units granted, one per op.
var syncScript = redis.NewScript(`
local stride = 2
` + redisNow + `local period = tonumber(ARGV[1])
local function ms(us) return string.format('%d', math.max(1, math.ceil(us / 1000))) end
local out = {}
for i = 0, n - 1 do
  local a = 1 + i * 6
  local kind, limit, burst = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local correct, want, least = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local step = period / limit
  local tat = math.max(tonumber(redis.call('GET', KEYS[i * 2 + 1])) or now, now)
  tat = math.max(tat + correct * step, now)
  local got = 0
  if want > 0 then
    local top = now + period
    if kind == 1 then top = now + burst * step end
    got = math.min(want, math.floor((top - tat) / step))
    if got < least then got = 0 end
    tat = tat + got * step
  end
  if tat > now then
    redis.call('SET', KEYS[i * 2 + 1], string.format('%.17g', tat), 'PX', ms(math.max(2 * period, tat - now + period)))
  else
    redis.call('DEL', KEYS[i * 2 + 1])
  end
  redis.call('SET', KEYS[i * 2 + 2], string.format('%.17g', now), 'PX', ms(2 * period))
  out[i + 1] = got
end
return out
`)

// releaseScript corrects TPM from the estimate to the actual tokens (a
// refund stops at a full bucket; debt has no floor) and frees slots.
//
// KEYS, three per limit: tpm, conc, clock.
// ARGV: member, delta tokens (actual − estimate), period µs; then two per
// limit: tpm (0 = none), 1 if a slot is held.
var releaseScript = redis.NewScript(`
local stride = 3
` + redisNow + `local member, delta, period = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 0, n - 1 do
  local k, a = i * 3, 3 + i * 2
  local tpm = tonumber(ARGV[a + 1])
  if tpm > 0 and delta ~= 0 then
    local step = period / tpm
    local tat = math.max(tonumber(redis.call('GET', KEYS[k + 1])) or now, now) + delta * step
    if tat > now then
      redis.call('SET', KEYS[k + 1], string.format('%.17g', tat), 'PX',
        string.format('%d', math.ceil(math.max(2 * period, tat - now + period) / 1000)))
    else
      redis.call('DEL', KEYS[k + 1])
    end
  end
  if ARGV[a + 2] == '1' then redis.call('ZREM', KEYS[k + 2], member) end
end
return 1
`)

// renewScript extends held slots' leases; a slot already expired (and
// perhaps given to another request) is not brought back.
//
// KEYS: conc keys. ARGV: lease µs, then the member held in each key.
var renewScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[1])
local score = string.format('%.17g', now + lease)
local ttl = string.format('%d', math.ceil(2 * lease / 1000))
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', score, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return 1
`)
