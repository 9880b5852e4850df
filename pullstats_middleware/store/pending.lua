-- What Redis still holds for some keys, in one atomic read: each key's live hash,
-- and its value in every open claim (claimed, maybe not yet in SQL). The reader
-- adds a claim's values only if SQL does not know its id yet.
--
-- KEYS[1] {prefix}/claims, KEYS[2..] the live keys; ARGV[1] the claim hash prefix
local out = {live = {}, claims = {}}
local ids = redis.call('SMEMBERS', KEYS[1])
for n = 2, #KEYS do
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
