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

# Fan-out to members given as parallel lists; members of one process share one inbox entry.
_FANOUT = (
    _ROOM
    + """
local function fanout(now, ttl, header, payload, prefix, members, caps)
  local order, locals, capof, counts = {}, {}, {}, {}
  for i, member in ipairs(members) do
    local bang = string.find(member, '!', 1, true)
    local key, loc = prefix .. member, ''
    if bang then
      key = prefix .. string.sub(member, 1, bang)
      loc = string.sub(member, bang + 1)
    end
    if locals[key] == nil then
      order[#order + 1] = key
      locals[key] = {}
      capof[key] = tonumber(caps[i]) or 100
      counts[key] = 0
    end
    if bang then table.insert(locals[key], loc) end
    counts[key] = counts[key] + 1
  end
  local delivered, dropped, expired = 0, 0, 0
  for _, key in ipairs(order) do
    local len, gone = room(key, capof[key], now)
    expired = expired + gone
    if len < 0 then
      dropped = dropped + counts[key]
    else
      redis.call('RPUSH', key, header .. table.concat(locals[key], ',') .. ' ' .. payload)
      redis.call('PEXPIRE', key, ttl)
      delivered = delivered + counts[key]
    end
  end
  return {delivered, dropped, expired}
end

local function live_members(zkey, hkey, now)
  local stale = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
  if #stale > 0 then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now)
    redis.call('HDEL', hkey, unpack(stale))
  end
  local members = redis.call('ZRANGE', zkey, 0, -1)
  if #members == 0 then return members, {} end
  return members, redis.call('HMGET', hkey, unpack(members))
end
"""
)

# ARGV: now_ms, ttl_ms, header, payload, prefix, member, capacity, member, capacity, ...
FANOUT = Script(
    _FANOUT
    + """
local members, caps = {}, {}
for i = 6, #ARGV, 2 do
  members[#members + 1] = ARGV[i]
  caps[#caps + 1] = ARGV[i + 1]
end
return fanout(tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5], members, caps)
"""
)

# KEYS: group zset, group capacity hash; ARGV: now_ms, ttl_ms, header, payload, prefix.
# Only valid when every member's list lives on this server (a single-shard layer).
GROUP_SEND = Script(
    _FANOUT
    + """
local now = tonumber(ARGV[1])
local members, caps = live_members(KEYS[1], KEYS[2], now)
if #members == 0 then return {0, 0, 0} end
return fanout(now, ARGV[2], ARGV[3], ARGV[4], ARGV[5], members, caps)
"""
)

# KEYS: group zset, group capacity hash; ARGV: now_ms -> {member, capacity, ...}
GROUP_MEMBERS = Script(
    _FANOUT
    + """
local members, caps = live_members(KEYS[1], KEYS[2], tonumber(ARGV[1]))
local out = {}
for i, member in ipairs(members) do
  out[#out + 1] = member
  out[#out + 1] = caps[i] or '100'
end
return out
"""
)

# KEYS: group zset, group capacity hash; ARGV: expires_at_ms, ttl_ms, channel, capacity
GROUP_ADD = Script(
    """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
)

# KEYS: group zset, group capacity hash; ARGV: channel
GROUP_DISCARD = Script(
    """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
)
