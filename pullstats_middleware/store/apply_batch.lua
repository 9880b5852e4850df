-- Apply one recorder batch (in a cluster: the part of it in one hash slot)
-- atomically and at most once.
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
-- KEYS[...]             (cluster) every other key the caller expects the script to touch
-- ARGV[1..6]            marker ttl, nt, nm, ne, window, clock skew
-- ARGV[7..10]           key prefix, origin (the recording process), ni, index ttl
-- ARGV[11]              '1' with a database: every hash also counts per UTC day
--                       ('d:YYYY-MM-DD'), notes who pulled that day ('u:YYYY-MM-DD:
--                       <puller hash>', for unique pullers; `pullers` is a space-
--                       separated list of hashes) and is marked for the flush worker
-- ARGV[12]              np, the number of pushes
-- ARGV[13]              '1' in a Redis Cluster (see below)
--
-- A resolution holds "ts origin tag index", an unclaimed GET "ts origin date".
-- `index` is the digest a HEAD resolved to when it is an image index whose
-- children are known ('-' otherwise): the HEAD then waits under the index and
-- under each child, and the first GET of any of them consumes all, so a pull is
-- counted once. A GET may seem to precede its HEAD by up to the clock skew only
-- when two processes recorded them; one process knows their order exactly.
--
-- In a cluster, every key carries its repository as hash tag ({repo}), and a
-- script may touch only keys it was given in KEYS: Redis checks where a script
-- may run (MOVED, ASK, TRYAGAIN while its slot migrates) by those alone. Some
-- names come from stored values: the tag a waiting HEAD resolved, the children of
-- an index. So the pairing first runs as a plan that writes nothing (its writes
-- go to a table that later reads see); if the plan would touch a key not in KEYS,
-- the script returns {2, those keys...} having written nothing, and the caller
-- calls again with them. Otherwise the same code runs for real. Both passes read
-- the same data: nothing else runs in between, and time stands still in a script.

local marker = KEYS[1]
local cluster = ARGV[13] == '1'
if redis.call('EXISTS', marker) == 1 then
  -- a write, so a WAIT the caller sends next waits for the first apply too
  if cluster then redis.call('EXPIRE', marker, ARGV[1]) end
  return {0}
end

local nt, nm, ne = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local window, skew = tonumber(ARGV[5]), tonumber(ARGV[6])
local prefix, origin, ni, index_ttl = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local durable = ARGV[11] == '1'
local np = tonumber(ARGV[12])
local skipped = {}
local pairs_made = 0  -- HEAD + GET pairs made into tag pulls, for monitoring

-- Key names built here, as redis.py and cluster.py build them.
local function pairing_key(family, client, repo, digest)
  if cluster then
    return prefix .. '/' .. family .. '/{' .. repo .. '}/' .. client .. '/' .. digest
  end
  return prefix .. '/' .. family .. '/' .. client .. '/' .. repo .. '/' .. digest
end

local function record_key(family, repo, name)
  if cluster then return prefix .. '/' .. family .. '/{' .. repo .. '}/' .. name end
  return prefix .. '/' .. family .. '/' .. repo .. '/' .. name
end

-- Where a record is listed for the flush worker (and, in a cluster, for listings).
local function held_key(key)
  if cluster then return prefix .. '/held/{' .. string.match(key, '{([^}]*)}') .. '}' end
  return prefix .. '/dirty'
end

-- The plan: a key it needs that the caller did not give, and its writes so far.
local planning, overlay, declared, missing = false, {}, {}, {}
for _, key in ipairs(KEYS) do declared[key] = true end

local function touch(key)
  if planning and not declared[key] then
    declared[key] = true
    table.insert(missing, key)
  end
end

local function get(key)
  touch(key)
  if planning and overlay[key] ~= nil then return overlay[key] end
  return redis.call('GET', key)
end

local function set(key, value, ttl, nx)
  touch(key)
  if planning then
    if not (nx and get(key)) then overlay[key] = value end
  elseif nx then
    redis.call('SET', key, value, 'EX', ttl, 'NX')
  else
    redis.call('SET', key, value, 'EX', ttl)
  end
end

local function del(key)
  touch(key)
  if planning then overlay[key] = false else redis.call('DEL', key) end
end

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

local function mark(key)
  if cluster or durable then redis.call('SADD', held_key(key), key) end
end

local function bump(key, n, date, digest, pullers)
  if planning then
    touch(key)
    touch(held_key(key))
    return
  end
  local count, last = current(key)
  if count == nil then return end
  if durable then
    local day = string.sub(date, 1, 10)
    redis.call('HINCRBY', key, 'd:' .. day, n)
    for _, puller in ipairs(words(pullers)) do
      redis.call('HSET', key, 'u:' .. day .. ':' .. puller, '1')
    end
  end
  mark(key)
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

-- Index relations, then attribution: whichever of the HEAD and the GET lands
-- second makes the pair. k, a: where their KEYS and ARGV begin.
local ttl = math.ceil(window + skew)
local function pairing(k, a)
  for _ = 1, ni do
    set(KEYS[k], ARGV[a], index_ttl)
    k, a = k + 1, a + 1
  end
  for _ = 1, ne do
    local rkey, ukey, ikey = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    local kind, ts, date = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
    local repo, tag, digest, client = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
    local puller = ARGV[a + 7]
    if kind == 'g' then
      local head_ts, allowed, head_tag, index = parse(get(rkey))
      if pairs_with(head_ts, ts, allowed) then
        if index and index ~= '-' then
          -- the whole group waits no more: the index and every child it lists
          local group = words(get(record_key('index', repo, index)))
          table.insert(group, index)
          for _, member in ipairs(group) do
            del(pairing_key('resolution', client, repo, member))
          end
        else
          index = digest
        end
        del(rkey)
        bump(record_key('tag', repo, head_tag), 1, date, index, puller)
        if not planning then pairs_made = pairs_made + 1 end
      else
        set(ukey, ARGV[a + 1] .. ' ' .. origin .. ' ' .. date, ttl, true)
      end
    else
      local children = words(get(ikey))
      local paired = false
      -- A GET already waiting (recorded by another process): of the digest, or of a child.
      for n = 0, #children do
        local waiting = ukey
        if n > 0 then waiting = pairing_key('unclaimed', client, repo, children[n]) end
        local get_ts, allowed, get_date = parse(get(waiting))
        if pairs_with(ts, get_ts, allowed) then
          del(waiting)
          bump(record_key('tag', repo, tag), 1, get_date, digest, puller)
          if not planning then pairs_made = pairs_made + 1 end
          paired = true
          break
        end
      end
      if not paired then
        local index = '-'
        if #children > 0 then index = digest end
        local value = ARGV[a + 1] .. ' ' .. origin .. ' ' .. tag .. ' ' .. index
        set(rkey, value, ttl)
        for _, child in ipairs(children) do
          set(pairing_key('resolution', client, repo, child), value, ttl)
        end
      end
    end
    k, a = k + 3, a + 8
  end
end

local pairing_k = 2 + nt + nm + np
local pairing_a = 14 + 4 * nt + 3 * nm + 2 * np
if cluster then
  planning = true
  pairing(pairing_k, pairing_a)
  planning = false
  if #missing > 0 then return {2, unpack(missing)} end
end
redis.call('SET', marker, '1', 'EX', ARGV[1])

local a = 14
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
    mark(key)
  end
  k, a = k + 1, a + 2
end
pairing(pairing_k, pairing_a)

return {1, pairs_made, unpack(skipped)}
