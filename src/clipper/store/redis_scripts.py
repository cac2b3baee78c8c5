"""The Lua scripts of the Redis config store (each runs atomically in Redis).

Pure text: every mutating script checks, writes, bumps the generation and
publishes on the changes channel in one step, so no notification is lost.
"""

# What a mutating script returns when it changed nothing: a no-op, or a refusal
# that Python turns into the same exception as the other stores. A change
# returns the new generation (an integer) instead.
NOOP, EXISTS, MISSING = "noop", "exists", "missing"

# Shared head of every mutating script. ARGV[1] is the key prefix.
PRELUDE = """
local P = ARGV[1]
local function changed()
    local generation = redis.call('INCR', P .. ':generation')
    redis.call('PUBLISH', P .. ':changes', generation)
    return generation
end
"""

ADD_APP = """
-- ARGV: prefix, name, record
if redis.call('HSETNX', P .. ':apps', ARGV[2], ARGV[3]) == 0 then return 'exists' end
return changed()
"""

UPDATE_APP = """
-- ARGV: prefix, name, record
if redis.call('HEXISTS', P .. ':apps', ARGV[2]) == 0 then return 'missing' end
redis.call('HSET', P .. ':apps', ARGV[2], ARGV[3])
return changed()
"""

DELETE_APP = """
-- ARGV: prefix, name
local app = ARGV[2]
if redis.call('HDEL', P .. ':apps', app) == 0 then return 'noop' end
local links = P .. ':links:' .. app
for _, model in ipairs(redis.call('LRANGE', links, 0, -1)) do
    redis.call('SREM', P .. ':linked:' .. model, app)
end
redis.call('DEL', links, P .. ':pstate:' .. app, P .. ':pstate-age:' .. app)
return changed()
"""

ADD_MODEL = """
-- ARGV: prefix, name, version, record, make_current ('1' or '0')
local name, version = ARGV[2], ARGV[3]
if redis.call('HSETNX', P .. ':specs:' .. name, version, ARGV[4]) == 0 then return 'exists' end
redis.call('RPUSH', P .. ':versions:' .. name, version)
redis.call('SADD', P .. ':models', name)
if ARGV[5] == '1' then redis.call('HSET', P .. ':current', name, version) end
return changed()
"""

UPDATE_MODEL = """
-- ARGV: prefix, name, version, record
-- The current version and the replica count live under other keys, so they stay.
local specs = P .. ':specs:' .. ARGV[2]
if redis.call('HEXISTS', specs, ARGV[3]) == 0 then return 'missing' end
redis.call('HSET', specs, ARGV[3], ARGV[4])
return changed()
"""

DELETE_MODEL_VERSION = """
-- ARGV: prefix, name, version
local name, version = ARGV[2], ARGV[3]
local specs = P .. ':specs:' .. name
if redis.call('HDEL', specs, version) == 0 then return 'noop' end
redis.call('LREM', P .. ':versions:' .. name, 0, version)
redis.call('HDEL', P .. ':replicas:' .. name, version)
if redis.call('HGET', P .. ':current', name) == version then
    redis.call('HDEL', P .. ':current', name)
end
if redis.call('HLEN', specs) == 0 then
    -- The last version: the model is gone, and so are its links.
    redis.call('SREM', P .. ':models', name)
    redis.call('DEL', P .. ':versions:' .. name, P .. ':replicas:' .. name)
    local linked = P .. ':linked:' .. name
    for _, app in ipairs(redis.call('SMEMBERS', linked)) do
        redis.call('LREM', P .. ':links:' .. app, 0, name)
    end
    redis.call('DEL', linked)
end
return changed()
"""

SET_CURRENT_VERSION = """
-- ARGV: prefix, name, version
if redis.call('HEXISTS', P .. ':specs:' .. ARGV[2], ARGV[3]) == 0 then return 'missing' end
redis.call('HSET', P .. ':current', ARGV[2], ARGV[3])
return changed()
"""

ADD_LINKS = """
-- ARGV: prefix, app, model...
local app = ARGV[2]
if redis.call('HEXISTS', P .. ':apps', app) == 0 then return 'missing' end
local added = 0
for i = 3, #ARGV do
    -- The reverse index doubles as the membership test, which also skips
    -- a model named twice in one call.
    if redis.call('SADD', P .. ':linked:' .. ARGV[i], app) == 1 then
        redis.call('RPUSH', P .. ':links:' .. app, ARGV[i])
        added = added + 1
    end
end
if added == 0 then return 'noop' end
return changed()
"""

REMOVE_LINKS = """
-- ARGV: prefix, app, model...
local app = ARGV[2]
if redis.call('HEXISTS', P .. ':apps', app) == 0 then return 'missing' end
local removed = 0
for i = 3, #ARGV do
    if redis.call('SREM', P .. ':linked:' .. ARGV[i], app) == 1 then
        redis.call('LREM', P .. ':links:' .. app, 0, ARGV[i])
        removed = removed + 1
    end
end
if removed == 0 then return 'noop' end
return changed()
"""

SET_NUM_REPLICAS = """
-- ARGV: prefix, name, version, n
if redis.call('HEXISTS', P .. ':specs:' .. ARGV[2], ARGV[3]) == 0 then return 'missing' end
redis.call('HSET', P .. ':replicas:' .. ARGV[2], ARGV[3], ARGV[4])
return changed()
"""

# Read-only: every version record, each model's in the order added. ARGV: prefix[, name]
LIST_MODELS = """
local P = ARGV[1]
local names
if #ARGV >= 2 then names = {ARGV[2]} else names = redis.call('SMEMBERS', P .. ':models') end
local out = {}
for _, name in ipairs(names) do
    local specs = P .. ':specs:' .. name
    for _, version in ipairs(redis.call('LRANGE', P .. ':versions:' .. name, 0, -1)) do
        local record = redis.call('HGET', specs, version)
        if record then out[#out + 1] = record end
    end
end
return out
"""

# The write step of a policy-state update, queued inside the MULTI/EXEC block
# that WATCHes the states (so not a mutating script of the kind above: states
# are not configuration, nothing is INCRed or published). It writes the
# states, stamps each user's in the age set with a score above every other
# (uid "", the shared state, has none), and past the cap removes the users
# with the lowest scores: the least recently written. A state written by a
# version without age sets has no score yet; it gets 0, the oldest.
# ARGV: prefix, app, max user states (0: no cap), then uid, state pairs.
# Returns how many user states it removed.
WRITE_POLICY_STATES = """
local P, app, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local states, ages = P .. ':pstate:' .. app, P .. ':pstate-age:' .. app
local users = redis.call('HLEN', states) - redis.call('HEXISTS', states, '')
if redis.call('ZCARD', ages) < users then
    for _, uid in ipairs(redis.call('HKEYS', states)) do
        if uid ~= '' then redis.call('ZADD', ages, 'NX', 0, uid) end
    end
end
local clock = 0
local newest = redis.call('ZRANGE', ages, -1, -1, 'WITHSCORES')
if #newest == 2 then clock = tonumber(newest[2]) end
for i = 4, #ARGV, 2 do
    redis.call('HSET', states, ARGV[i], ARGV[i + 1])
    if ARGV[i] ~= '' then
        clock = clock + 1
        redis.call('ZADD', ages, clock, ARGV[i])
    end
end
local removed = 0
if cap > 0 then
    local over = redis.call('ZCARD', ages) - cap
    if over > 0 then
        local oldest = redis.call('ZPOPMIN', ages, over)
        for i = 1, #oldest, 2 do
            removed = removed + redis.call('HDEL', states, oldest[i])
        end
    end
end
return removed
"""

PUT_ROLLOUT = """
-- ARGV: prefix, model, rollout record
redis.call('HSET', P .. ':rollouts', ARGV[2], ARGV[3])
return changed()
"""

DELETE_ROLLOUT = """
-- ARGV: prefix, model
redis.call('HDEL', P .. ':rollout-evidence', ARGV[2])
if redis.call('HDEL', P .. ':rollouts', ARGV[2]) == 0 then return 'noop' end
return changed()
"""

SAVE_ROLLOUT_EVIDENCE = """
-- ARGV: prefix, model, evidence. Not configuration: no generation, no notification.
if redis.call('HEXISTS', P .. ':rollouts', ARGV[2]) == 0 then return 'noop' end
redis.call('HSET', P .. ':rollout-evidence', ARGV[2], ARGV[3])
return 'noop'
"""
