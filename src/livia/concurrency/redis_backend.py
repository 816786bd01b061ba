"""Limits shared through Redis, so they hold across processes and hosts.

Each upstream's state lives in a few keys under ``PREFIX:{API}:`` (one hash slot per
upstream, so a Redis Cluster works too):

- ``leases``  ZSET lease id -> expiry: the running attempts (the slots). A holder renews
  its leases every ``lease_ttl / 3`` s; a holder that dies stops renewing, and its slots
  come back within ``lease_ttl``.
- ``pause``   STRING: the upstream is paused until this time (after a 429).
- ``requests_per_minute`` / ``requests_per_hour``  ZSET lease id -> start time: the
  request windows; one entry per admitted start, so at most `limit` per window.
- ``tokens`` ZSET "lease id|tokens" -> start time, and ``tokens_sum`` STRING, their sum.

Admission is one Lua script: it reads the Redis server clock (so hosts with skewed
clocks agree), drops what expired, checks every limit and only when all pass records
the start everywhere. No limit is stored in Redis: each process passes its policy as
script arguments, so nothing can disagree with a stale copy. Every key has a TTL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import re
import secrets
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from livia.concurrency.limiter import AdaptiveConcurrency, Denial, Grant, MemoryLimiter, loop_time
from livia.concurrency.policy import ApiPolicy
from livia.logs import safe_url

log = logging.getLogger("livia.concurrency")

#: Seconds a lease lives without renewal: a dead holder's slots return within this.
DEFAULT_LEASE_TTL = 60.0
#: Seconds one Redis command may take (connect or reply) before it counts as unreachable.
DEFAULT_TIMEOUT = 2.0
#: Connections one process opens to Redis at most (a burst of callers queues for them).
DEFAULT_MAX_CONNECTIONS = 32
#: Most seconds a call waits for a free pooled connection.
POOL_WAIT = 10.0
#: Most seconds between refreshes of the figures `usage()` reports (and lease renewals).
USAGE_REFRESH = 5.0
#: The wait a caller is told while Redis is unreachable (the gate re-asks after it).
OUTAGE_WAIT = 1.0
#: Most admissions (and, apart, hand-backs) one batch carries: bounds one script's run time.
BATCH_MAX = 128

_US = 1_000_000

#: The admission script. Times are integer microseconds of the Redis server clock.
#: In "batch" mode one call hands back slots, then admits several attempts in turn (each
#: judged on the state the ones before it left): one round trip for many callers.
ADMIT_LUA = """
-- KEYS[1] leases ZSET (lease id -> expiry)   KEYS[2] pause STRING (paused until)
-- KEYS[3] token reservations ZSET ("id|tokens" -> start)   KEYS[4] token sum STRING
-- KEYS[5..] one ZSET per request window (lease id -> start)
-- ARGV[1] "acquire" | "estimate" | "batch"   ARGV[2] lease id   ARGV[3] lease ttl
-- ARGV[4] max_concurrent   ARGV[5] ahead   ARGV[6] cost (tokens)
-- ARGV[7] token limit (0 = off)   ARGV[8] token window length
-- ARGV[7 + 2i], ARGV[8 + 2i]: limit and length of request window i
-- "acquire" / "estimate" return {granted, wait, reason, in flight, tokens used, starts in
-- window 1, ...}; reason: 0 none, 1 paused, 2 tokens, 3 slots (max_concurrent), 10 + i
-- window i.
-- "batch": after the windows, ARGV[b] = n, then n lease ids to release (each start moves
-- to now, as RELEASE_LUA), then (lease id, cost, ahead) triples: an acquire, or with lease
-- id "" an estimate. Returns {in flight, tokens used (-1: not read), starts in window 1
-- (-1), ..., then granted, wait, reason of each in order}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[3])
local max_concurrent = tonumber(ARGV[4])
local tok_limit = tonumber(ARGV[7])
local tok_len = tonumber(ARGV[8])
local nwin = #KEYS - 4

-- Tokens: reservations in the last minute and their running sum.
local function amount(member)
  return tonumber(string.match(member, '|(%-?%d+)$')) or 0
end

local function admit(acquire, id, cost_arg, ahead)
  local cost = tonumber(cost_arg)
  local wait, reason = 0, 0

  local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
  if paused > now then
    wait, reason = paused - now, 1
  end

  -- Request windows: the start `ahead` places back is held back by the latest known start
  -- a whole number of windows before it (RequestWindow.wait_for, generalised).
  local counts = {}
  for i = 1, nwin do
    local key = KEYS[4 + i]
    local limit = tonumber(ARGV[7 + 2 * i])
    local len = tonumber(ARGV[8 + 2 * i])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - len)
    local count = redis.call('ZCARD', key)
    counts[i] = count
    local rounds = math.floor(ahead / limit) + 1
    local j = count + (ahead % limit) - limit
    local w
    if j >= 0 then
      w = tonumber(redis.call('ZRANGE', key, j, j, 'WITHSCORES')[2]) + rounds * len - now
    else
      w = (rounds - 1) * len
    end
    if w > wait then
      wait, reason = w, 10 + i
    end
  end

  local tok_used = 0
  if tok_limit > 0 then
    local cutoff = now - tok_len
    local freed = 0
    repeat
      local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cutoff, 'LIMIT', 0, 512)
      for _, m in ipairs(old) do
        freed = freed + amount(m)
      end
      if #old > 0 then
        redis.call('ZREM', KEYS[3], unpack(old))
      end
    until #old < 512
    local entries = redis.call('ZCARD', KEYS[3])
    if entries == 0 then
      redis.call('DEL', KEYS[4])
    elseif freed ~= 0 then
      tok_used = redis.call('DECRBY', KEYS[4], freed)
    else
      tok_used = tonumber(redis.call('GET', KEYS[4]) or '0')
    end
    if entries > 0 and tok_used + cost > tok_limit then
      local need = tok_used + cost - tok_limit
      local acc, last, w, offset = 0, now, nil, 0
      while w == nil do
        local batch = redis.call('ZRANGE', KEYS[3], offset, offset + 511, 'WITHSCORES')
        if #batch == 0 then
          break
        end
        for k = 1, #batch, 2 do
          acc = acc + amount(batch[k])
          last = tonumber(batch[k + 1])
          if acc >= need then
            w = last + tok_len - now
            break
          end
        end
        offset = offset + 512
      end
      if w == nil then
        w = last + tok_len - now
      end
      if w > wait then
        wait, reason = w, 2
      end
    end
  end

  -- Slots: leases not renewed in time belong to holders that died.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local in_flight = redis.call('ZCARD', KEYS[1])
  if reason == 0 and ahead == 0 and in_flight >= max_concurrent then
    reason = 3
  end

  local granted = 0
  if acquire then
    if redis.call('ZSCORE', KEYS[1], id) then
      -- A retried call whose first reply was lost: it was admitted already.
      granted, wait, reason = 1, 0, 0
      redis.call('ZADD', KEYS[1], now + ttl, id)
    elseif reason == 0 then
      granted = 1
      redis.call('ZADD', KEYS[1], now + ttl, id)
      redis.call('PEXPIRE', KEYS[1], math.floor(ttl / 1000) + 1000)
      in_flight = in_flight + 1
      for i = 1, nwin do
        local key = KEYS[4 + i]
        redis.call('ZADD', key, now, id)
        redis.call('PEXPIRE', key, math.floor(tonumber(ARGV[8 + 2 * i]) / 1000) + 1000)
        counts[i] = counts[i] + 1
      end
      if tok_limit > 0 then
        local keep = math.floor(tok_len / 1000) + 1000
        redis.call('ZADD', KEYS[3], now, id .. '|' .. cost_arg)
        tok_used = redis.call('INCRBY', KEYS[4], cost)
        redis.call('PEXPIRE', KEYS[3], keep)
        redis.call('PEXPIRE', KEYS[4], keep)
      end
    end
  end
  return granted, wait, reason, in_flight, tok_used, counts
end

if ARGV[1] == 'batch' then
  local b = 9 + 2 * nwin
  local nrel = tonumber(ARGV[b])
  for k = b + 1, b + nrel do
    redis.call('ZREM', KEYS[1], ARGV[k])
    for i = 1, nwin do
      redis.call('ZADD', KEYS[4 + i], 'XX', now, ARGV[k])
    end
  end
  local head = {-1, -1}
  for i = 1, nwin do
    head[2 + i] = -1
  end
  local out = {}
  for k = b + nrel + 1, #ARGV - 2, 3 do
    local granted, wait, reason, in_flight, tok_used, counts =
      admit(ARGV[k] ~= '', ARGV[k], ARGV[k + 1], tonumber(ARGV[k + 2]))
    out[#out + 1] = granted
    out[#out + 1] = wait
    out[#out + 1] = reason
    head[1], head[2] = in_flight, tok_used
    for i = 1, nwin do
      head[2 + i] = counts[i]
    end
  end
  if #out == 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    head[1] = redis.call('ZCARD', KEYS[1])
  end
  for _, v in ipairs(out) do
    head[#head + 1] = v
  end
  return head
end

local granted, wait, reason, in_flight, tok_used, counts =
  admit(ARGV[1] == 'acquire', ARGV[2], ARGV[6], tonumber(ARGV[5]))
local out = {granted, wait, reason, in_flight, tok_used}
for i = 1, nwin do
  out[5 + i] = counts[i]
end
return out
"""

#: Hand a slot back. KEYS[1] leases, KEYS[2..] the request windows; ARGV[1] lease id.
#: The attempt's start in each window moves to now (it certainly reached the upstream by
#: now): a request that left late — its process starved of CPU after admission — is
#: counted from when it was surely sent, so the next start it holds back waits for that.
#: Returns the slots in use.
RELEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now, ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
"""

#: Replace a token reservation with the real usage (no-op once it left the window).
#: KEYS[1] reservations, KEYS[2] sum; ARGV[1] old member, ARGV[2] new member,
#: ARGV[3] difference, ARGV[4] window length. Returns {applied, tokens used}.
SETTLE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > now - tonumber(ARGV[4]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[1], score, ARGV[2])
  return {1, redis.call('INCRBY', KEYS[2], ARGV[3])}
end
return {0, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""

#: Pause the upstream for ARGV[1] µs from now, unless it is paused longer already.
PAUSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local till = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if till > current then
  redis.call('SET', KEYS[1], till, 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1)
  return 1
end
return 0
"""

#: Renew leases this process holds. KEYS[1] leases; ARGV[1] ttl, ARGV[2..] lease ids.
#: Returns the ids that were gone (expired and taken back, or never there).
RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
redis.call('PEXPIRE', KEYS[1], math.floor(ttl / 1000) + 1000)
return lost
"""

#: Say this process is alive, and count the live ones. KEYS[1] replicas ZSET (id -> expiry);
#: ARGV[1] this process's id, ARGV[2] ttl (µs; 0: leave). Returns the live processes.
PRESENCE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[2]) / 1000) + 1000)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
"""

#: Put the starts made on local limits during an outage into the shared windows.
#: KEYS: the request windows; ARGV[1] an id prefix, ARGV[2..] each start's age in µs.
#: Returns the starts added.
REJOIN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local added = 0
for i = 1, #KEYS do
  for j = 2, #ARGV do
    redis.call('ZADD', KEYS[i], now - tonumber(ARGV[j]), ARGV[1] .. '.' .. i .. '.' .. j)
    added = added + 1
  end
end
return added
"""

_REASONS = {1: "paused", 2: "tokens_per_minute", 3: "max_concurrent"}
#: Outage policies: wait for Redis (fail closed), or answer within a local share.
ON_OUTAGE = ("wait", "local")


def local_share(policy: ApiPolicy, replicas: int) -> ApiPolicy | None:
    """The limits one of `replicas` processes may use alone: each limit ÷ replicas, rounded
    down; None when a share would be 0 (that upstream then waits for Redis)."""
    n = max(1, replicas)
    changes: dict[str, int] = {"max_concurrent": policy.max_concurrent // n}
    for name in ("requests_per_minute", "requests_per_hour", "tokens_per_minute"):
        limit = getattr(policy, name)
        if limit:
            changes[name] = limit // n
    if any(value < 1 for value in changes.values()):
        return None
    return policy.updated(**changes)


#: Which script and line a Lua error reply came from (Redis 6 and 7 forms): noise for people.
_SCRIPT_NOISE = re.compile(r"^.*?user_script:\d+: |\s*script: \w+, on @user_script:\d+\.?$")


def _refused(cause: BaseException) -> bool:
    """True when Redis answered but refused (an error reply), not when it was unreachable."""
    unreachable = (RedisConnectionError, RedisTimeoutError)
    return isinstance(cause, RedisError) and not isinstance(cause, unreachable)


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached (or refused us); the message says what to do.

    `problem` is what happened, in a few words, without the advice.
    """

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url = url
        detail = _SCRIPT_NOISE.sub("", str(cause)).rstrip(". ") or type(cause).__name__
        if _refused(cause):
            self.problem = f"Redis at {url} refused the limiter's command: {detail}"
            advice = "check [coordination] redis_url and prefix (keys under it must be Livia's)"
        else:
            self.problem = f"cannot reach Redis at {url}: {detail}"
            advice = "start it"
        super().__init__(f'{self.problem}; {advice} or set [coordination] backend = "memory"')


@dataclass(slots=True)
class _LocalLease:
    """A slot of the local limits used while Redis was away."""

    limiter: MemoryLimiter
    grant: Grant


def _limits(policy: ApiPolicy) -> dict[str, int]:
    names = ("max_concurrent", "requests_per_minute", "requests_per_hour", "tokens_per_minute")
    return {n: getattr(policy, n) for n in names if getattr(policy, n)}


@dataclass(slots=True)
class _Admit:
    """An admission waiting for the next batch."""

    lease_id: str  # "" for an estimate
    cost: int
    ahead: int
    future: asyncio.Future[tuple[int, int, int]]


@dataclass(slots=True)
class RedisLease:
    """A held slot: its lease id, and its entry in the token window (if tokens count)."""

    id: str
    tokens: str | None = None  # the token reservation's member, "id|tokens"


class RedisLimiter:
    """One upstream's limits, kept in Redis and shared by every process that uses them.

    Invariants (across all processes using the same prefix and policy): at most
    ``max_concurrent`` unexpired leases; each request window holds at most its limit of
    starts in any sliding interval, by the Redis server clock; the reserved tokens of
    the last minute stay within ``tokens_per_minute`` (a call larger than the whole
    limit is admitted only into an empty window); nothing starts while paused.
    """

    shared = True

    def __init__(self, backend: RedisBackend, api: str, policy: ApiPolicy) -> None:
        self.backend = backend
        self.api = api
        self.policy = policy
        key = backend.key
        self._windows = policy.windows
        self._keys = [
            key(api, "leases"),
            key(api, "pause"),
            key(api, "tokens"),
            key(api, "tokens_sum"),
            *(key(api, name) for name, _, _ in self._windows),
        ]
        self._policy_args: list[int] = [policy.tokens_per_minute, round(policy.token_window * _US)]
        for _, limit, seconds in self._windows:
            self._policy_args += [limit, round((seconds + policy.window_margin) * _US)]
        #: Leases this limiter holds (renewed by the backend's heartbeat).
        self.held: dict[str, RedisLease] = {}
        self.adaptive = AdaptiveConcurrency(policy.max_concurrent)
        self._used: dict[str, float] = {"max_concurrent": 0, "tokens_per_minute": 0}
        for name, _, _ in self._windows:
            self._used[name] = 0
        #: This process's own recent starts (loop time), newest last, per window.
        self._starts: dict[str, deque[float]] = {
            name: deque(maxlen=limit) for name, limit, _ in self._windows
        }
        #: The local limits in force while Redis is away (`on_outage = "local"`), else None.
        self.local: MemoryLimiter | None = None
        self._local_since = 0.0
        self._next_probe = 0.0
        #: Admissions and hand-backs waiting for the next batch (`RedisBackend.batch`).
        self._admits: list[_Admit] = []
        self._releases: list[tuple[str, asyncio.Future[int] | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._sending = False  # a caller sends a batch itself (nothing else was in flight)
        #: Batches sent (one round trip each) and the admissions they carried.
        self.batches = 0
        self.batched_admits = 0

    async def _admit(self, mode: str, lease_id: str, cost: int, ahead: int) -> list[int]:
        args: list[int | str] = [
            mode,
            lease_id,
            round(self.backend.lease_ttl * _US),
            self.adaptive.limit,
            ahead,
            cost,
            *self._policy_args,
        ]
        reply = await self.backend.call(self.backend.admit_script, self._keys, args)
        counts = [int(x) for x in reply]
        self._used["max_concurrent"] = counts[3]
        self._used["tokens_per_minute"] = counts[4]
        for (name, _, _), used in zip(self._windows, counts[5:], strict=False):
            self._used[name] = used
        return counts

    # -- batching: one script call carries the hand-backs and admissions of many callers --

    async def _admit_batched(
        self, lease_id: str, cost: int, ahead: int = 0
    ) -> tuple[int, int, int]:
        """Admit (or with lease id "", estimate) through the next batch: (granted, wait µs,
        reason code)."""
        future: asyncio.Future[tuple[int, int, int]] = asyncio.get_running_loop().create_future()
        self._admits.append(_Admit(lease_id, cost, ahead, future))
        await self._send_or_queue()
        return await future  # cancelled: the flusher skips it, or the caller hands it back

    async def _release_batched(self, lease_id: str, wait: bool = True) -> int | None:
        """Hand a lease back in the next batch; the slots in use once it is done."""
        future = asyncio.get_running_loop().create_future() if wait else None
        self._releases.append((lease_id, future))
        if future is None:
            self._kick()
            return None
        await self._send_or_queue()
        return await future

    async def _send_or_queue(self) -> None:
        """Nothing in flight: send the batch from this task (no hop through the flusher);
        otherwise it goes in the next batch."""
        if self._sending or (self._flusher is not None and not self._flusher.done()):
            self._kick()
            return
        self._sending = True
        try:
            await self._send_batch()
        finally:
            self._sending = False
            if self._admits or self._releases:
                self._kick()

    def _kick(self) -> None:
        if self._sending:
            return  # the sender kicks when it is done
        if self._flusher is None or self._flusher.done():
            self._flusher = task = asyncio.get_running_loop().create_task(
                self._flush(), name=f"livia-redis-batch-{self.api}"
            )
            self.backend._tasks.add(task)
            task.add_done_callback(self.backend._tasks.discard)

    async def _flush(self) -> None:
        """Send what is queued, one batch at a time (so a hand-back queued after an
        admission always reaches Redis after it), until nothing is left.

        Everyone waiting in a batch gets its answer: the result, or the error."""
        while self._admits or self._releases:
            await self._send_batch()

    async def _send_batch(self) -> None:
        """Send one batch of what is queued (at most BATCH_MAX of each kind)."""
        admits = [a for a in self._admits[:BATCH_MAX] if not a.future.done()]
        del self._admits[:BATCH_MAX]
        releases = self._releases[:BATCH_MAX]
        del self._releases[:BATCH_MAX]
        if not admits and not releases:
            return
        args: list[int | str] = [
            "batch",
            "",
            round(self.backend.lease_ttl * _US),
            self.adaptive.limit,
            0,
            0,
            *self._policy_args,
            len(releases),
            *(lease_id for lease_id, _ in releases),
        ]
        for admit in admits:
            args += [admit.lease_id, admit.cost, admit.ahead]
        try:
            reply = await self.backend.call(self.backend.admit_script, self._keys, args)
            values = [int(x) for x in reply]
        except BaseException as exc:
            waiting: list[asyncio.Future[Any]] = [a.future for a in admits]
            waiting += [f for _, f in releases if f is not None]
            for future in waiting:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if isinstance(exc, Exception):
                return
            raise
        self.batches += 1
        self.batched_admits += len(admits)
        nwin = len(self._windows)
        self._used["max_concurrent"] = values[0]
        if values[1] >= 0:
            self._used["tokens_per_minute"] = values[1]
        for (name, _, _), used in zip(self._windows, values[2 : 2 + nwin], strict=True):
            if used >= 0:
                self._used[name] = used
        results = values[2 + nwin :]
        for k, admit in enumerate(admits):
            if not admit.future.done():
                admit.future.set_result((results[3 * k], results[3 * k + 1], results[3 * k + 2]))
        for _, done in releases:
            if done is not None and not done.done():
                done.set_result(values[0])

    def _denial(self, wait_us: int, code: int) -> Denial:
        if code >= 10:
            reason = self._windows[code - 11][0]
        else:
            reason = _REASONS.get(code, "max_concurrent")
        return Denial(max(0.0, wait_us / _US), reason)

    async def acquire(self, cost: int) -> Grant | Denial:
        """Start one attempt now if every limit allows it (one atomic script)."""
        if self.local is not None and not await self._rejoin():
            return await self._acquire_local(cost)
        lease_id = self.backend.new_lease_id()
        try:
            if self.backend.batch:
                granted, wait_us, code = await self._admit_batched(lease_id, cost)
            else:
                granted, wait_us, code, *_ = await self._admit("acquire", lease_id, cost, 0)
        except RedisUnavailable:
            self._release_later(lease_id)  # the script may have run before the reply was lost
            if not self.backend.reached:
                raise
            if self._go_local():
                return await self._acquire_local(cost)
            return self._outage()
        except asyncio.CancelledError:
            self._release_later(lease_id)
            raise
        if not granted:
            return self._denial(wait_us, code)
        lease = RedisLease(
            lease_id, f"{lease_id}|{cost}" if self.policy.tokens_per_minute else None
        )
        self.held[lease_id] = lease
        self._record_start()
        self.backend.watch()
        return Grant(cost, lease)

    async def estimate(self, cost: int, ahead: int) -> Denial | None:
        """A lower bound on the wait of a caller with `ahead` callers before it."""
        if self.local is not None:
            return await self.local.estimate(cost, ahead)
        try:
            if self.backend.batch:
                _, wait_us, code = await self._admit_batched("", cost, ahead)
            else:
                _, wait_us, code, *_ = await self._admit("estimate", "", cost, ahead)
        except RedisUnavailable:
            if not self.backend.reached:
                raise
            if self._go_local() and self.local is not None:
                return await self.local.estimate(cost, ahead)
            return self._outage()
        return self._denial(wait_us, code) if code else None

    def _outage(self) -> Denial:
        """Fail closed while Redis is away: nobody starts, callers wait (up to their deadline)."""
        return Denial(OUTAGE_WAIT, self.backend.problem, outage=True)

    # -- outage: local limits ----------------------------------------------------------

    def _record_start(self) -> None:
        now = loop_time()
        for starts in self._starts.values():
            starts.append(now)

    def _go_local(self) -> bool:
        """Switch to local limits if the backend allows it; True when they are in force.

        Each limit becomes its share (limit ÷ the replicas last seen alive). The share's
        windows start with what this process may already have spent of them: its own
        recent starts, or its share of the shared count last seen, whichever is more, so
        the starts of all replicas in any window stay within the limit.
        """
        if self.local is not None:
            return True
        if self.backend.on_outage != "local":
            return False
        replicas = self.backend.replicas
        share = local_share(self.policy, replicas)
        if share is None:
            return False
        local = MemoryLimiter(share)
        now = loop_time()
        for window, (name, _, seconds) in zip(local.windows, self._windows, strict=True):
            own = [t for t in self._starts[name] if t > now - seconds - self.policy.window_margin]
            seen = math.ceil(self._used[name] / max(1, replicas))
            for t in own:
                window.record(t)
            for _ in range(max(0, seen - len(own))):
                window.record(now)
        self.local = local
        self._local_since = now
        self._next_probe = now + OUTAGE_WAIT
        self.backend.mode_changed()
        log.warning(
            "api=%s answers on local limits while Redis is away: %s (1/%d of each limit)",
            self.api,
            ", ".join(f"{k}={v}" for k, v in _limits(share).items()),
            max(1, replicas),
        )
        return True

    async def _acquire_local(self, cost: int) -> Grant | Denial:
        assert self.local is not None
        result = await self.local.acquire(cost)
        if isinstance(result, Grant):
            self._record_start()
            return Grant(cost, _LocalLease(self.local, result))
        return result

    async def _rejoin(self) -> bool:
        """Redis answers again: count the local starts in the shared windows, then share.

        Asks Redis at most every `OUTAGE_WAIT` s; True once the limits are shared again.
        """
        local = self.local
        now = loop_time()
        if local is None:
            return True
        if now < self._next_probe:
            return False
        self._next_probe = now + OUTAGE_WAIT
        longest = self._starts[self._windows[-1][0]] if self._windows else ()
        ages = [round((now - t) * _US) for t in longest if t >= self._local_since]
        try:
            await self.backend.call(
                self.backend.rejoin_script, self._keys[4:], [self.backend.new_lease_id(), *ages]
            )
        except RedisUnavailable:
            return False
        self.local = None
        self.backend.mode_changed()
        log.warning(
            "api=%s shares its limits through Redis again (%d local start(s) counted in)",
            self.api,
            len(ages),
        )
        return True

    def _release_later(self, lease_id: str) -> None:
        """Hand back a lease whose grant never reached us (a no-op if it was not granted)."""
        if self.backend.batch:
            self._releases.append((lease_id, None))  # after any batch carrying its admission
            self._kick()
            return
        self.backend.background(self._release_id(lease_id))

    @property
    def _release_keys(self) -> list[str]:
        """The keys the release script touches: the leases, then each request window."""
        return [self._keys[0], *self._keys[4:]]

    async def _release_id(self, lease_id: str) -> None:
        try:
            await self.backend.call(self.backend.release_script, self._release_keys, [lease_id])
        except RedisUnavailable:
            pass  # it expires within the lease TTL

    async def release(self, grant: Grant) -> None:
        """Hand the slot back (if Redis is away, the lease expires within `lease_ttl`)."""
        lease = grant.lease
        if isinstance(lease, _LocalLease):
            await lease.limiter.release(lease.grant)
            return
        if not isinstance(lease, RedisLease):
            return
        self.held.pop(lease.id, None)
        if self.backend.batch:
            try:
                await self._release_batched(lease.id)
            except RedisUnavailable:
                pass
            return  # cancelled: it is in a batch already, and will be sent
        try:
            in_flight = await self.backend.call(
                self.backend.release_script, self._release_keys, [lease.id]
            )
        except RedisUnavailable:
            return
        except asyncio.CancelledError:
            self._release_later(lease.id)
            raise
        self._used["max_concurrent"] = int(in_flight)

    async def refresh(self) -> None:
        """Update the figures `usage` reports (they include other processes' calls)."""
        try:
            await self._admit("estimate", "", 0, 0)
        except RedisUnavailable:
            pass

    async def settle(self, grant: Grant, tokens: int) -> None:
        """Replace the call's token estimate with what it really used."""
        lease = grant.lease
        if not isinstance(lease, RedisLease) or lease.tokens is None:
            return
        old = lease.tokens
        new = f"{lease.id}|{tokens}"
        if new == old:
            return
        delta = tokens - int(old.rpartition("|")[2])
        try:
            applied, used = await self.backend.call(
                self.backend.settle_script, self._keys[2:4], [old, new, delta, 60 * _US]
            )
        except RedisUnavailable:
            return
        if applied:
            lease.tokens = new
        self._used["tokens_per_minute"] = int(used)

    async def pause(self, seconds: float) -> None:
        """Stop every process's starts for `seconds` (after a 429)."""
        if self.local is not None:
            await self.local.pause(seconds)
        try:
            await self.backend.call(
                self.backend.pause_script, self._keys[1:2], [max(1, round(seconds * _US))]
            )
        except RedisUnavailable:
            log.warning("could not share a %.1fs pause of api=%s", seconds, self.api)

    async def renew(self) -> None:
        """Push back the expiry of the leases held here (called by the heartbeat)."""
        if not self.held:
            return
        ids = list(self.held)
        args: list[int | str] = [round(self.backend.lease_ttl * _US), *ids]
        try:
            lost = await self.backend.call(self.backend.renew_script, self._keys[:1], args)
        except RedisUnavailable:
            return
        for raw in lost:
            lease_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if self.held.pop(lease_id, None) is not None:
                log.warning(
                    "lease %s of api=%s expired before it was renewed (was this process "
                    "stalled longer than the lease TTL?); its slot was given back",
                    lease_id,
                    self.api,
                )

    def room(self) -> int:
        """Slots free as Redis last said (other processes may have taken some since)."""
        if self.local is not None or not self.backend.batch:
            return 1
        return max(1, self.adaptive.limit - int(self._used["max_concurrent"]))

    def throttled(self) -> None:
        self.adaptive.throttled(int(self._used["max_concurrent"]))

    def succeeded(self) -> None:
        self.adaptive.succeeded()

    def usage(self) -> dict[str, dict[str, float]]:
        """The figures Redis reported on this process's last call (shared across processes);
        while on local limits, those (this process's share)."""
        if self.local is not None:
            return self.local.usage()
        out: dict[str, dict[str, float]] = {
            "max_concurrent": {
                "limit": self.policy.max_concurrent,
                "used": self._used["max_concurrent"],
                "window_s": 0,
                "effective": self.adaptive.limit,
            }
        }
        for name, limit, seconds in self._windows:
            out[name] = {"limit": limit, "used": self._used[name], "window_s": seconds}
        if self.policy.tokens_per_minute:
            out["tokens_per_minute"] = {
                "limit": self.policy.tokens_per_minute,
                "used": self._used["tokens_per_minute"],
                "window_s": 60.0,
            }
        return out

    async def aclose(self) -> None:
        """Hand back any lease still held (this process is stopping); skipped if Redis is away."""
        if self.backend.down:
            self.held.clear()
            return
        for lease in list(self.held.values()):
            await self.release(Grant(0, lease))


class RedisBackend:
    """Limits kept in Redis: the same limits hold for every process using `url` and `prefix`.

    ``await backend.connect()`` at start-up checks Redis answers (and raises
    `RedisUnavailable` at once if not). Every command is bounded by `timeout`. While
    Redis is unreachable later on, admission fails closed: callers wait, up to their
    deadline, and no limit is exceeded.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "livia",
        lease_ttl: float = DEFAULT_LEASE_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        on_outage: str = "wait",
        batch: bool = True,
    ) -> None:
        if on_outage not in ON_OUTAGE:
            raise ValueError(f'on_outage must be "wait" or "local", not {on_outage!r}')
        self.on_outage = on_outage
        #: Admissions and hand-backs of concurrent callers share one script call (one round
        #: trip) per upstream; False: one call each (for comparison).
        self.batch = batch
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = url
        self.safe_url = safe_url(url)
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        #: The most seconds one script call may take, waiting for a pooled connection included.
        self.call_timeout = POOL_WAIT + 2 * timeout + 1
        try:
            # A burst of callers queues for one of `max_connections` (bounded by POOL_WAIT)
            # instead of failing; a dropped connection is retried once, at once.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=POOL_WAIT,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise ValueError(f"[coordination] redis_url {self.safe_url!r}: {exc}") from None
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.admit_script = self.client.register_script(ADMIT_LUA)
        self.release_script = self.client.register_script(RELEASE_LUA)
        self.settle_script = self.client.register_script(SETTLE_LUA)
        self.pause_script = self.client.register_script(PAUSE_LUA)
        self.renew_script = self.client.register_script(RENEW_LUA)
        self.presence_script = self.client.register_script(PRESENCE_LUA)
        self.rejoin_script = self.client.register_script(REJOIN_LUA)
        #: Live processes sharing these limits, as Redis last said (this one included).
        self.replicas = 1
        self._presence: asyncio.Task[None] | None = None
        #: True once Redis has answered: later failures are outages, not misconfiguration.
        self.reached = False
        self._down = False
        self._origin = f"{secrets.token_hex(4)}{os.getpid():x}"
        self._seq = itertools.count(1)
        self._limiters: list[RedisLimiter] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: What went wrong last (the reason callers are given while Redis is away).
        self.problem = f"cannot reach Redis at {self.safe_url}"

    @property
    def down(self) -> bool:
        """True while the last command failed (Redis unreachable)."""
        return self._down

    def key(self, api: str, part: str) -> str:
        """The Redis key of one part of `api`'s state (one hash slot per upstream)."""
        return f"{self.prefix}:{{{api}}}:{part}"

    def new_lease_id(self) -> str:
        """An id no other lease of any process uses."""
        return f"{self._origin}.{next(self._seq):x}"

    def limiter(self, api: str, policy: ApiPolicy) -> RedisLimiter:
        limiter = RedisLimiter(self, api, policy)
        self._limiters.append(limiter)
        return limiter

    async def connect(self) -> None:
        """Check Redis answers and load the scripts; raise `RedisUnavailable` if not."""
        try:
            async with asyncio.timeout(self.timeout * 2 + 1):
                await self.client.ping()
                for script in (
                    self.admit_script,
                    self.release_script,
                    self.settle_script,
                    self.pause_script,
                    self.renew_script,
                    self.presence_script,
                    self.rejoin_script,
                ):
                    script.sha = await self.client.script_load(script.script)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(self.safe_url, exc) from exc
        self.reached = True
        await self._announce()
        if self._presence is None or self._presence.done():
            self._presence = asyncio.get_running_loop().create_task(
                self._presence_forever(), name="livia-redis-presence"
            )
        log.info("limits are shared through Redis at %s (prefix %r)", self.safe_url, self.prefix)

    async def call(self, script: Any, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        """Run one script, bounded by the timeout; raise `RedisUnavailable` when it fails."""
        try:
            async with asyncio.timeout(self.call_timeout):
                reply = await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            error = RedisUnavailable(self.safe_url, exc)
            if not self._down and self.reached:
                log.warning("%s; no call starts on shared limits until this clears", error.problem)
            self._down = True
            self.problem = error.problem
            raise error from exc
        if self._down:
            log.info("Redis at %s is back", self.safe_url)
            self._down = False
        self.reached = True
        return reply

    @property
    def mode(self) -> str:
        """ "shared" (limits in Redis), "local" (some upstream answers on its share while
        Redis is away) or "waiting" (Redis is away: no call starts)."""
        if any(limiter.local is not None for limiter in self._limiters):
            return "local"
        return "waiting" if self._down else "shared"

    def coordination(self) -> dict[str, Any]:
        """What `/stats` shows of the coordination: backend, mode, live replicas."""
        return {
            "backend": self.name,
            "mode": self.mode,
            "replicas": self.replicas,
            "on_outage": self.on_outage,
        }

    def mode_changed(self) -> None:
        """A limiter switched between shared and local limits (for the log)."""
        log.info("coordination mode: %s", self.mode)

    async def _announce(self, leaving: bool = False) -> None:
        ttl = 0 if leaving else round(3 * self._presence_interval * _US)
        try:
            count = await self.call(
                self.presence_script, [f"{self.prefix}:replicas"], [self._origin, ttl]
            )
        except RedisUnavailable:
            return
        self.replicas = max(1, int(count))

    @property
    def _presence_interval(self) -> float:
        return min(self.lease_ttl / 3, USAGE_REFRESH)

    async def _presence_forever(self) -> None:
        """Say this process is alive every few seconds; learn how many are, and (for the
        local limits of an outage) how much of each shared window is spent."""
        while True:
            await asyncio.sleep(self._presence_interval)
            await self._announce()
            if self.on_outage == "local" and not self._down:
                for limiter in list(self._limiters):
                    if limiter.local is None:
                        await limiter.refresh()

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on its own (bounded by `call_timeout`), keeping a reference to it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch(self) -> None:
        """Make sure the heartbeat that renews held leases runs (on the running loop)."""
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._renew_forever(), name="livia-redis-heartbeat"
            )

    async def _renew_forever(self) -> None:
        """Every `lease_ttl / 3` s (at most USAGE_REFRESH s): renew held leases, refresh usage."""
        interval = min(self.lease_ttl / 3, USAGE_REFRESH)
        while True:
            await asyncio.sleep(interval)
            for limiter in list(self._limiters):
                try:
                    await limiter.renew()
                    await limiter.refresh()
                except Exception:  # a bug here must not stop the renewals
                    log.exception("renewing the leases of api=%s failed", limiter.api)

    async def aclose(self) -> None:
        """Stop renewing, hand back leases still held, and close the connections."""
        for task in (self._heartbeat, self._presence):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._heartbeat = self._presence = None
        if self.reached and not self._down:
            await self._announce(leaving=True)
        for limiter in self._limiters:
            await limiter.aclose()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.call_timeout)
        await self.client.aclose(close_connection_pool=True)
