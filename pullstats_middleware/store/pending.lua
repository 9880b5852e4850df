-- What Redis still holds for some keys, in one atomic read: each key's live hash,
-- and its value in every open claim (claimed, maybe not yet in SQL). The reader
-- adds a claim's values only if SQL does not know its id yet. And the number of
-- claims made so far (claim.lua counts them): a claim made after this read and
-- committed before the reader's SQL read would count its live values twice, so
-- the reader asks again when the number has changed by then.
--
-- KEYS[1] {prefix}/claims, KEYS[2] {prefix}/claims_made, KEYS[3..] the live keys;
-- ARGV[1] the claim hash prefix.
-- In a Redis Cluster (ARGV[3] '1'), ARGV[2] live keys follow KEYS[2], then the claim
-- hashes the caller expects: a script may touch only the keys it is given, so if a
-- claim is open whose hash is not among them, the script returns {missing: [...]}
-- and the caller asks again with them.
local out = {live = {}, claims = {}, made = tonumber(redis.call('GET', KEYS[2]) or '0')}
local ids = redis.call('SMEMBERS', KEYS[1])
local live = #KEYS - 2
if ARGV[3] == '1' then
  live = tonumber(ARGV[2])
  local given, missing = {}, {}
  for n = 3 + live, #KEYS do given[KEYS[n]] = true end
  for _, id in ipairs(ids) do
    if not given[ARGV[1] .. id] then table.insert(missing, ARGV[1] .. id) end
  end
  if #missing > 0 then return cjson.encode({missing = missing}) end
end
for n = 3, 2 + live do
  local key = KEYS[n]
  local fields = redis.pcall('HGETALL', key)
  if type(fields) == 'table' and not fields.err and #fields > 0 then
    local record = {}
    for i = 1, #fields, 2 do record[fields[i]] = fields[i + 1] end
    out.live[key] = record
  end
  for _, id in ipairs(ids) do
    local value = redis.call('HGET', ARGV[1] .. id, key)
    if value then
      out.claims[id] = out.claims[id] or {}
      out.claims[id][key] = cjson.decode(value)
    end
  end
end
return cjson.encode(out)
