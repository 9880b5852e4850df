-- Claim up to ARGV[2] dirty keys for the flush worker, atomically, under claim id ARGV[1].
--
-- Each claimed hash moves, whole, into the claim hash KEYS[3] (field: the key,
-- value: its fields as JSON) and is deleted, so new pulls start it afresh; the
-- claim id joins the set of open claims KEYS[2]. The worker writes the claim to
-- SQL together with its id, in one transaction, and only then releases it here.
-- A key that holds something other than a hash is left where it is.
--
-- KEYS[1] {prefix}/dirty, KEYS[2] {prefix}/claims, KEYS[3] {prefix}/claim/{id},
-- KEYS[4] {prefix}/claims_made: a counter of claims, which readers compare before and
-- after their SQL read (pending.lua, durable/reads.py).
-- Returns what it claimed, {key, fields as JSON, ...}: the worker needs no second read.
--
-- In a Redis Cluster (ARGV[3] 'declared') the three are the repository's own, and a
-- script may touch only the keys it is given: the caller picks up to ARGV[2] of the
-- set's members (KEYS[5..]), and those still in the set are claimed.
local keys
if ARGV[3] == 'declared' then
  keys = {}
  for n = 5, #KEYS do
    if redis.call('SREM', KEYS[1], KEYS[n]) == 1 then table.insert(keys, KEYS[n]) end
  end
else
  keys = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))
end
local claimed = {}  -- key, its fields as JSON, key, ...
local n = 0
for _, key in ipairs(keys) do
  local fields = redis.pcall('HGETALL', key)
  if type(fields) == 'table' and not fields.err and #fields > 0 then
    local record = {}
    for i = 1, #fields, 2 do record[fields[i]] = fields[i + 1] end
    claimed[n + 1] = key
    claimed[n + 2] = cjson.encode(record)
    n = n + 2
  end
end
if n == 0 then return {} end
-- One HSET and one DEL per 2,000 records (unpack() takes a few thousand values).
for first = 1, n, 4000 do
  local last = math.min(first + 3999, n)
  redis.call('HSET', KEYS[3], unpack(claimed, first, last))
  local gone = {}
  for i = first, last, 2 do gone[#gone + 1] = claimed[i] end
  redis.call('DEL', unpack(gone))
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[4])
return claimed
