-- Apply one recorder batch atomically and at most once.
--
-- redis-py re-sends a command after a timeout or a lost reply; a plain
-- HINCRBY would then count twice. The batch id marker makes a re-send a
-- no-op. Every key is read with pcall before it is written, so a key that
-- holds foreign data is skipped (and reported) instead of failing the batch
-- half-way, which Redis would not roll back.
--
-- KEYS[1]               batch marker
-- KEYS[2 .. 1+nt]       tag hashes        ARGV: count, date, digest
-- KEYS[.. +nm]          manifest hashes   ARGV: count, date
-- KEYS[.. +2*ne]        per attribution event: resolution key, unclaimed key
--                                         ARGV: kind ('h'|'g'), ts, date, repo, tag, digest
-- ARGV[1..6]            marker ttl, nt, nm, ne, window, clock skew
-- ARGV[7]               key prefix (to name the tag hash an event bumps)
-- ARGV[8]               origin: the process that recorded the batch
--
-- A resolution holds "ts origin tag", an unclaimed GET "ts origin date". A GET
-- may seem to precede its HEAD by up to the clock skew only when two processes
-- recorded them; one process knows their order exactly.

local marker = KEYS[1]
if redis.call('EXISTS', marker) == 1 then
  return {0}
end
redis.call('SET', marker, '1', 'EX', ARGV[1])

local nt, nm, ne = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local window, skew, prefix, origin = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local skipped = {}

-- Returns the current count, or nil (and records the key) when the key holds
-- something other than our hash.
local function current(key)
  local v = redis.pcall('HMGET', key, 'pull_count', 'last_pull_date')
  if type(v) == 'table' and v.err then
    table.insert(skipped, key)
    return nil
  end
  local count = 0
  if v[1] then
    count = tonumber(v[1])
    if count == nil or count ~= math.floor(count) then
      table.insert(skipped, key)
      return nil
    end
  end
  return count, v[2]
end

local function bump(key, n, date, digest)
  local count, last = current(key)
  if count == nil then return end
  local total = string.format('%d', count + n)
  if not last or date >= last then
    if digest then
      redis.call('HSET', key, 'pull_count', total, 'last_pull_date', date,
                 'current_manifest_digest', digest)
    else
      redis.call('HSET', key, 'pull_count', total, 'last_pull_date', date)
    end
  else
    redis.call('HSET', key, 'pull_count', total)
  end
end

-- "ts origin rest" -> ts, the allowed skew against this batch's origin, rest
local function parse(value)
  if not value then return nil end
  local s1 = string.find(value, ' ', 1, true)
  local s2 = s1 and string.find(value, ' ', s1 + 1, true)
  if not s2 then return nil end
  local allowed = skew
  if string.sub(value, s1 + 1, s2 - 1) == origin then allowed = 0 end
  return tonumber(string.sub(value, 1, s1 - 1)), allowed, string.sub(value, s2 + 1)
end

local function pairs_with(head_ts, get_ts, allowed)
  return head_ts and get_ts and head_ts - allowed <= get_ts and get_ts <= head_ts + window
end

local a = 9
local k = 2
for _ = 1, nt do
  bump(KEYS[k], tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2])
  k, a = k + 1, a + 3
end
for _ = 1, nm do
  bump(KEYS[k], tonumber(ARGV[a]), ARGV[a + 1], nil)
  k, a = k + 1, a + 2
end

-- Attribution: whichever of the HEAD and the GET lands second makes the pair.
local ttl = math.ceil(window + skew)
for _ = 1, ne do
  local rkey, ukey = KEYS[k], KEYS[k + 1]
  local kind, ts, date = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
  local repo, tag, digest = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  if kind == 'g' then
    local head_ts, allowed, head_tag = parse(redis.call('GET', rkey))
    if pairs_with(head_ts, ts, allowed) then
      redis.call('DEL', rkey)
      bump(prefix .. '/tag/' .. repo .. '/' .. head_tag, 1, date, digest)
    else
      redis.call('SET', ukey, ARGV[a + 1] .. ' ' .. origin .. ' ' .. date, 'EX', ttl, 'NX')
    end
  else
    local get_ts, allowed, get_date = parse(redis.call('GET', ukey))
    if pairs_with(ts, get_ts, allowed) then
      redis.call('DEL', ukey)
      bump(prefix .. '/tag/' .. repo .. '/' .. tag, 1, get_date, digest)
    else
      redis.call('SET', rkey, ARGV[a + 1] .. ' ' .. origin .. ' ' .. tag, 'EX', ttl)
    end
  end
  k, a = k + 2, a + 6
end

return {1, unpack(skipped)}
