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

local marker = KEYS[1]
if redis.call('EXISTS', marker) == 1 then
  return {0}
end
redis.call('SET', marker, '1', 'EX', ARGV[1])

local nt, nm, ne = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local window, skew, prefix = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
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

local function pairs_with(head_ts, get_ts)
  return head_ts - skew <= get_ts and get_ts <= head_ts + window
end

local a = 8
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
    local found = redis.call('GET', rkey)
    local sep = found and string.find(found, ' ', 1, true)
    if sep and pairs_with(tonumber(string.sub(found, 1, sep - 1)), ts) then
      redis.call('DEL', rkey)
      bump(prefix .. '/tag/' .. repo .. '/' .. string.sub(found, sep + 1), 1, date, digest)
    else
      redis.call('SET', ukey, ARGV[a + 1] .. ' ' .. date, 'EX', ttl, 'NX')
    end
  else
    local claimed = redis.call('GET', ukey)
    local sep = claimed and string.find(claimed, ' ', 1, true)
    if sep and pairs_with(ts, tonumber(string.sub(claimed, 1, sep - 1))) then
      redis.call('DEL', ukey)
      bump(prefix .. '/tag/' .. repo .. '/' .. tag, 1, string.sub(claimed, sep + 1), digest)
    else
      redis.call('SET', rkey, ARGV[a + 1] .. ' ' .. tag, 'EX', ttl)
    end
  end
  k, a = k + 2, a + 6
end

return {1, unpack(skipped)}
