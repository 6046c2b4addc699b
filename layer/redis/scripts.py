"""Server-side steps, each one atomic Lua call: push under capacity, multi-pop, group fan-out.

Every list entry is ``<13-digit expiry in ms><local part> <payload>``: the expiry lets the
server drop stale heads when a channel is full and the receiver drop stale entries it pops; the
local part (after ``!``) routes a process-specific message inside its process's inbox list,
and a group fan-out puts several comma-separated local parts on one entry so one copy of the
payload serves every member in that process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Script:
    """Lua source plus its SHA1, for EVALSHA with an EVAL fallback after a server restart."""

    source: str
    sha: str = field(init=False)
    _by_sha: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.source.encode()).hexdigest()
        object.__setattr__(self, "sha", sha)
        Script._by_sha[sha] = self.source

    @classmethod
    def source_of(cls, sha: str) -> str:
        return cls._by_sha[sha]

    @classmethod
    def sources(cls) -> list[str]:
        """Every script, for ``SCRIPT LOAD`` on each new connection."""
        return list(cls._by_sha.values())


# Drops expired heads of a full list; returns the new length or -1 when still full.
_ROOM = """
local function room(key, cap, now)
  local len = redis.call('LLEN', key)
  local expired = 0
  if cap > 0 and len >= cap then
    while len > 0 do
      local head = redis.call('LINDEX', key, 0)
      if tonumber(string.sub(head, 1, 13)) > now then break end
      redis.call('LPOP', key)
      len = len - 1
      expired = expired + 1
    end
    if len >= cap then return -1, expired end
  end
  return len, expired
end
"""

# KEYS[1] list; ARGV: now_ms, capacity (0 = unchecked), ttl_ms, entry -> {length | -1, expired}
PUSH = Script(
    _ROOM
    + """
local len, expired = room(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[1]))
if len < 0 then return {-1, expired} end
len = redis.call('RPUSH', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {len, expired}
"""
)

# KEYS: lists; ARGV: a count per list -> {key, {entries}, key, {entries}, ...} (non-empty only)
MPOP = Script(
    """
local out = {}
for i, key in ipairs(KEYS) do
  local items = redis.call('LPOP', key, ARGV[i])
  if items then
    out[#out + 1] = key
    out[#out + 1] = items
  end
end
return out
"""
)

# A group's fan-out plan: one entry per member list, ``key -> "<capacity> <members> <locals>"``
# (locals: the comma-separated local parts of that process's members; empty for a shared
# channel). It is kept in a hash beside the group, dropped whenever membership changes (add,
# discard, a lapsed member pruned) and rebuilt by the next send, so a send reads one field per
# member process instead of walking and parsing every member.
_PLAN = (
    _ROOM
    + """
local function build_plan(zkey, hkey, pkey, prefix)
  local members = redis.call('ZRANGE', zkey, 0, -1)
  if #members == 0 then return {} end
  local caps = redis.call('HMGET', hkey, unpack(members))
  local order, locals, capof = {}, {}, {}
  for i, member in ipairs(members) do
    local bang = string.find(member, '!', 1, true)
    local key, loc = prefix .. member, nil
    if bang then
      key = prefix .. string.sub(member, 1, bang)
      loc = string.sub(member, bang + 1)
    end
    if locals[key] == nil then
      order[#order + 1] = key
      locals[key] = {}
      capof[key] = tonumber(caps[i]) or 100
    end
    if loc then table.insert(locals[key], loc) end
  end
  local plan = {}
  for _, key in ipairs(order) do
    local names = locals[key]
    local spec = capof[key] .. ' ' .. math.max(#names, 1) .. ' ' .. table.concat(names, ',')
    plan[#plan + 1] = key
    plan[#plan + 1] = spec
    redis.call('HSET', pkey, key, spec)
  end
  local ttl = redis.call('PTTL', zkey)
  if ttl > 0 then redis.call('PEXPIRE', pkey, ttl) end
  return plan
end

-- The plan of a group ({key, spec, ...}), after pruning members whose membership lapsed.
local function group_plan(zkey, hkey, pkey, now, prefix)
  local first = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if #first == 0 then return {} end
  if tonumber(first[2]) > now then
    local plan = redis.call('HGETALL', pkey)
    if #plan > 0 then return plan end
  else
    local stale = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now)
    redis.call('HDEL', hkey, unpack(stale))
    redis.call('DEL', pkey)
  end
  return build_plan(zkey, hkey, pkey, prefix)
end

-- Push one entry per planned list (from ARGV[first] on: key, spec, key, spec, ...), except
-- to the lists whose key ends with ``skip`` (when it is not empty).
local function fanout(now, ttl, header, payload, plan, first, skip)
  local delivered, dropped, expired = 0, 0, 0
  for i = first, #plan, 2 do
    local key = plan[i]
    if skip == '' or string.sub(key, -#skip) ~= skip then
      local cap, count, locals = string.match(plan[i + 1], '^(%d+) (%d+) (.*)$')
      count = tonumber(count)
      local len, gone = room(key, tonumber(cap), now)
      expired = expired + gone
      if len < 0 then
        dropped = dropped + count
      else
        redis.call('RPUSH', key, header .. locals .. ' ' .. payload)
        redis.call('PEXPIRE', key, ttl)
        delivered = delivered + count
      end
    end
  end
  return {delivered, dropped, expired}
end
"""
)

# ARGV: now_ms, ttl_ms, header, payload, then plan entries: key, spec, key, spec, ...
FANOUT = Script(
    _PLAN
    + """
return fanout(tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV, 5, '')
"""
)

# KEYS: group zset, capacity hash, plan hash; ARGV: now_ms, ttl_ms, header, payload, prefix,
# skip (lists whose key ends with it get nothing; '' for none).
# Only valid when every member's list lives on this server (a single-shard layer).
GROUP_SEND = Script(
    _PLAN
    + """
local now = tonumber(ARGV[1])
local plan = group_plan(KEYS[1], KEYS[2], KEYS[3], now, ARGV[5])
return fanout(now, ARGV[2], ARGV[3], ARGV[4], plan, 1, ARGV[6])
"""
)

# KEYS: group zset, capacity hash, plan hash; ARGV: now_ms, prefix -> {key, spec, ...}
GROUP_PLAN = Script(
    _PLAN
    + """
return group_plan(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2])
"""
)

# KEYS: group zset, capacity hash, plan hash; ARGV: expires_at_ms, ttl_ms, channel, capacity
GROUP_ADD = Script(
    """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"""
)

# KEYS: group zset, capacity hash, plan hash; ARGV: channel
GROUP_DISCARD = Script(
    """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""
)
