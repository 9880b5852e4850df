-- Apply one recorder batch atomically and at most once.
--
-- redis-py re-sends a command after a timeout or a lost reply; a plain
-- HINCRBY would then count twice. The batch id marker makes a re-send a
-- no-op. Every key is read with pcall before it is written, so a key that
-- holds foreign data is skipped (and reported) instead of failing the batch
-- half-way, which Redis would not roll back.
--
-- KEYS[1]               batch marker
-- KEYS[2 .. 1+nt]       tag hashes        ARGV: count, date, digest, pullers
-- KEYS[.. +nm]          manifest hashes   ARGV: count, date, pullers
-- KEYS[.. +np]          tag hashes pushed ARGV: date, digest
-- KEYS[.. +ni]          index relations   ARGV: children, space-separated
-- KEYS[.. +3*ne]        per attribution event: resolution key, unclaimed key, index key
--                                         ARGV: kind ('h'|'g'), ts, date, repo, tag, digest,
--                                               client hash, puller
-- ARGV[1..6]            marker ttl, nt, nm, ne, window, clock skew
-- ARGV[7..10]           key prefix, origin (the recording process), ni, index ttl
-- ARGV[11]              '1' with a database: every hash also counts per UTC day
--                       ('d:YYYY-MM-DD'), notes who pulled that day ('u:YYYY-MM-DD:
--                       <puller hash>', for unique pullers; `pullers` is a space-
--                       separated list of hashes) and is added to the {prefix}/dirty
--                       set the flush worker claims from
-- ARGV[12]              np, the number of pushes
--
-- Reply: {0} for a batch applied before; else {1, HEAD/GET pairs made, skipped keys...}.
--
-- A resolution holds "ts origin tag index", an unclaimed GET "ts origin date".
-- `index` is the digest a HEAD resolved to when it is an image index whose
-- children are known ('-' otherwise): the HEAD then waits under the index and
-- under each child, and the first GET of any of them consumes all, so a pull is
-- counted once. A GET may seem to precede its HEAD by up to the clock skew only
-- when two processes recorded them; one process knows their order exactly.

local marker = KEYS[1]
if redis.call('EXISTS', marker) == 1 then
  return {0}
end
redis.call('SET', marker, '1', 'EX', ARGV[1])

local nt, nm, ne = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local window, skew = tonumber(ARGV[5]), tonumber(ARGV[6])
local prefix, origin, ni, index_ttl = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local durable = ARGV[11] == '1'
local np = tonumber(ARGV[12])
local skipped = {}
local pairs_made = 0  -- HEAD + GET pairs made into tag pulls, for monitoring

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

local function words(text)
  local out = {}
  for word in string.gmatch(text or '', '%S+') do table.insert(out, word) end
  return out
end

local function bump(key, n, date, digest, pullers)
  local count, last = current(key)
  if count == nil then return end
  if durable then
    local day = string.sub(date, 1, 10)
    redis.call('HINCRBY', key, 'd:' .. day, n)
    for _, puller in ipairs(words(pullers)) do
      redis.call('HSET', key, 'u:' .. day .. ':' .. puller, '1')
    end
    redis.call('SADD', prefix .. '/dirty', key)
  end
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

-- "ts origin rest..." -> ts, the skew allowed against this batch's origin, rest words
local function parse(value)
  local w = words(value)
  if #w < 3 then return nil end
  local allowed = skew
  if w[2] == origin then allowed = 0 end
  return tonumber(w[1]), allowed, w[3], w[4]
end

local function pairs_with(head_ts, get_ts, allowed)
  return head_ts and get_ts and head_ts - allowed <= get_ts and get_ts <= head_ts + window
end

local function pairing_key(family, client, repo, digest)
  return prefix .. '/' .. family .. '/' .. client .. '/' .. repo .. '/' .. digest
end

local a = 13
local k = 2
for _ = 1, nt do
  bump(KEYS[k], tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
  k, a = k + 1, a + 4
end
for _ = 1, nm do
  bump(KEYS[k], tonumber(ARGV[a]), ARGV[a + 1], nil, ARGV[a + 2])
  k, a = k + 1, a + 3
end
-- A push: the tag names its digest from now on, and was pushed at that date.
for _ = 1, np do
  local key, date, digest = KEYS[k], ARGV[a], ARGV[a + 1]
  local count = current(key)
  if count ~= nil then
    local pushed = redis.call('HGET', key, 'last_push_date')
    local pulled = redis.call('HGET', key, 'last_pull_date')
    if not pushed or date >= pushed then
      redis.call('HSET', key, 'last_push_date', date)
      if not pulled or date >= pulled then
        redis.call('HSET', key, 'current_manifest_digest', digest)
      end
    end
    if redis.call('HEXISTS', key, 'pull_count') == 0 then
      redis.call('HSET', key, 'pull_count', '0')
    end
    if durable then redis.call('SADD', prefix .. '/dirty', key) end
  end
  k, a = k + 1, a + 2
end
for _ = 1, ni do
  redis.call('SET', KEYS[k], ARGV[a], 'EX', index_ttl)
  k, a = k + 1, a + 1
end

-- Attribution: whichever of the HEAD and the GET lands second makes the pair.
local ttl = math.ceil(window + skew)
for _ = 1, ne do
  local rkey, ukey, ikey = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local kind, ts, date = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
  local repo, tag, digest, client = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local puller = ARGV[a + 7]
  if kind == 'g' then
    local head_ts, allowed, head_tag, index = parse(redis.call('GET', rkey))
    if pairs_with(head_ts, ts, allowed) then
      if index and index ~= '-' then
        -- the whole group waits no more: the index and every child it lists
        local group = words(redis.call('GET', prefix .. '/index/' .. repo .. '/' .. index))
        table.insert(group, index)
        for _, member in ipairs(group) do
          redis.call('DEL', pairing_key('resolution', client, repo, member))
        end
      else
        index = digest
      end
      redis.call('DEL', rkey)
      bump(prefix .. '/tag/' .. repo .. '/' .. head_tag, 1, date, index, puller)
      pairs_made = pairs_made + 1
    else
      redis.call('SET', ukey, ARGV[a + 1] .. ' ' .. origin .. ' ' .. date, 'EX', ttl, 'NX')
    end
  else
    local children = words(redis.call('GET', ikey))
    local paired = false
    -- A GET already waiting (recorded by another process): of the digest, or of a child.
    for n = 0, #children do
      local waiting = ukey
      if n > 0 then waiting = pairing_key('unclaimed', client, repo, children[n]) end
      local get_ts, allowed, get_date = parse(redis.call('GET', waiting))
      if pairs_with(ts, get_ts, allowed) then
        redis.call('DEL', waiting)
        bump(prefix .. '/tag/' .. repo .. '/' .. tag, 1, get_date, digest, puller)
        paired = true
        pairs_made = pairs_made + 1
        break
      end
    end
    if not paired then
      local index = '-'
      if #children > 0 then index = digest end
      local value = ARGV[a + 1] .. ' ' .. origin .. ' ' .. tag .. ' ' .. index
      redis.call('SET', rkey, value, 'EX', ttl)
      for _, child in ipairs(children) do
        redis.call('SET', pairing_key('resolution', client, repo, child), value, 'EX', ttl)
      end
    end
  end
  k, a = k + 3, a + 8
end

return {1, pairs_made, unpack(skipped)}
