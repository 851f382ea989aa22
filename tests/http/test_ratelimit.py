"""The rate limiter: one Redis round trip per request whatever the number of limits, the library's own
statistics, and a refused address that never spends its API client's budget."""

from __future__ import annotations

import asyncio
import math
import shutil
import time

import pytest
import redis
import redis.asyncio
from limits import parse_many
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from otp_service.http.ratelimit import RateLimiter, Window, window_stats
from tests.conftest import settings_for
from tests.helpers import make_client
from tests.throwaway import ThrowawayRedis

# These tests start a Redis of their own rather than use REDIS_URL's: they count its commands, flush its
# scripts and read all its keys, which a shared server's other clients would disturb (and be disturbed by).
needs_redis_server = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own: its command counts are this test's alone."""
    server = ThrowawayRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["in process", pytest.param("redis", marks=needs_redis_server)])
def limiter_url(request):
    """Where a limiter counts: "" (in process) or a Redis of the test's own; the same answers are owed."""
    return request.getfixturevalue("own_redis").url if request.param == "redis" else ""


def evalsha_calls(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k.lower() in ("cmdstat_evalsha", "cmdstat_eval"))


def test_statistics_are_the_librarys_own():
    """`window_stats` on a window already read equals the library's `get_window_stats` reading it again."""

    async def run():
        limiter = SlidingWindowCounterRateLimiter(storage_from_string("async+memory://"))
        for item in parse_many("5/second;7/minute;1000/hour"):
            for hits in range(9):
                await limiter.hit(item, "s", str(hits))
                if hits:
                    for _ in range(hits):
                        await limiter.hit(item, "s", str(hits))
                window = Window(
                    True, *await limiter.storage.get_sliding_window(item.key_for("s", str(hits)), item.get_expiry())
                )
                now = time.time()
                ours = window_stats(item, window, now)
                theirs = await limiter.get_window_stats(item, "s", str(hits))
                assert ours[0] == theirs.remaining
                assert math.isclose(ours[1], theirs.reset_time, abs_tol=0.05)

    asyncio.run(run())


def test_later_limits_are_counted_only_while_the_earlier_ones_allow(limiter_url):
    limiter = RateLimiter({"address": "2/minute", "client:read": "3/minute;10/hour"}, limiter_url)

    async def run():
        first = [await limiter.check([("address", "a"), ("client:read", "c")]) for _ in range(4)]
        assert [[d.allowed for d in ds] for ds in first] == [[True, True], [True, True], [False], [False]]
        assert [ds[0].remaining for ds in first] == [1, 0, 0, 0]
        assert first[2][0].retry_after >= 1 and first[2][0].limit == 2
        # The refused address spent nothing of the client's budget: one request left from elsewhere.
        other = await limiter.check([("address", "b"), ("client:read", "c")])
        assert [d.allowed for d in other] == [True, True]
        refused = await limiter.check([("address", "b"), ("client:read", "c")])
        assert [d.allowed for d in refused] == [True, False] and refused[1].retry_after >= 1
        assert limiter.fallbacks == 0  # counted where asked, not in process after a failed script

    asyncio.run(run())


@needs_redis_server
def test_each_request_costs_one_redis_round_trip(make_server, db_url, database, own_redis):
    """Address limit, client limit and the headers' statistics: one script call per request, not 3–4."""
    settings = settings_for(
        db_url,
        REDIS_URL=own_redis.url,
        RATE_LIMIT_DEFAULT="120/minute",
        RATE_LIMIT_PER_CLIENT="read=100/minute;1000/hour",
    )
    api = make_server(settings).client
    reader = make_client(database, "dashboard", "read")
    api.get("/api/v1/stats", auth=reader)  # the first request of a key asks the database who it is
    before = evalsha_calls(own_redis.url)
    responses = [api.get("/api/v1/stats", auth=reader) for _ in range(10)]
    assert [r.status for r in responses] == [200] * 10
    assert [r.headers["X-RateLimit-Remaining"] for r in responses[:2]] == ["118", "117"]
    assert evalsha_calls(own_redis.url) - before == 10


@needs_redis_server
def test_a_refused_address_does_not_spend_its_clients_budget_across_processes(make_server, db_url, database, own_redis):
    env = dict(
        REDIS_URL=own_redis.url,
        TRUSTED_PROXY_HOPS="1",
        RATE_LIMIT_DEFAULT="2/minute",
        RATE_LIMIT_PER_CLIENT="read=4/minute",
    )
    first, second = make_server(settings_for(db_url, **env)).client, make_server(settings_for(db_url, **env)).client
    reader = make_client(database, "dashboard", "read")

    def stats(api, address):
        return api.get("/api/v1/stats", auth=reader, headers={"X-Forwarded-For": address})

    flood = [stats(api, "192.0.2.1").status for api in (first, second) * 5]
    assert flood == [200, 200] + [429] * 8, flood  # the address's limit, shared by both processes
    assert [stats(first, "192.0.2.2").status, stats(second, "192.0.2.3").status] == [200, 200]  # the client's 3rd, 4th
    refused = stats(first, "192.0.2.4")
    assert refused.status == 429 and "client dashboard" in refused.body["message"]


@pytest.mark.slow
def test_a_refused_limit_spends_no_later_limit_of_its_scope(limiter_url):
    """3 per 4 seconds and 5 a minute: ten requests at once get three through; the seven refused by the first
    limit do not spend the minute's budget, so after four seconds the next request is allowed."""
    limiter = RateLimiter({"s": "3 per 4 seconds;5 per 60 seconds"}, limiter_url)

    async def run():
        first = [(await limiter.check([("s", "y")]))[0] for _ in range(10)]
        assert [d.allowed for d in first] == [True] * 3 + [False] * 7
        assert all(1 <= d.retry_after <= 4 for d in first[3:])
        await asyncio.sleep(4.2)
        assert (await limiter.check([("s", "y")]))[0].allowed

    asyncio.run(run())
    assert limiter.fallbacks == 0


def test_a_window_opened_this_instant_has_a_whole_window_to_wait():
    item = parse_many("3 per 4 seconds")[0]
    fresh = Window(False, 0, 0.0, 3, 8.0)  # the current window's key was set with twice the expiry to live
    assert window_stats(item, fresh, 100.0) == (0, 104.0)


@needs_redis_server
def test_a_client_refused_by_its_own_limit_gets_that_limits_headers(make_server, db_url, database, own_redis):
    env = dict(REDIS_URL=own_redis.url, RATE_LIMIT_DEFAULT="50/minute", RATE_LIMIT_PER_CLIENT="read=2/minute")
    api = make_server(settings_for(db_url, **env)).client
    reader = make_client(database, "dashboard", "read")
    answers = [api.get("/api/v1/stats", auth=reader) for _ in range(3)]
    assert [r.status for r in answers] == [200, 200, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "50"  # the address's, while it is the tighter one
    refused = answers[2]
    assert refused.headers["X-RateLimit-Limit"] == "2" and refused.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


@pytest.mark.slow
@needs_redis_server
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_cold_burst_on_a_healthy_redis_is_counted_there(tmp_path, own_redis, mode):
    """300 requests at once from one address at processes that have not served one yet: Redis answers them
    all (no fallback to in-process counters, no 503 when failing closed), and exactly the limit gets through."""
    from concurrent.futures import ThreadPoolExecutor
    from http.client import HTTPConnection

    from tests.conftest import API_KEY
    from tests.serving import METRICS_TOKEN, free_port, production_env, run_cli, start_cli, wait_healthy

    env = production_env(f"sqlite:///{tmp_path}/burst.db", API_KEY, REDIS_URL=own_redis.url)
    env.update(RATE_LIMIT_DEFAULT="10/minute", RATE_LIMIT_ON_REDIS_ERROR=mode)
    assert run_cli("migrate", cwd=tmp_path, **env).returncode == 0
    port = free_port()
    proc = start_cli("serve", "--processes", "2", cwd=tmp_path, PORT=str(port), **env)
    try:
        wait_healthy(port, proc)
        redis.Redis.from_url(own_redis.url).flushall()

        def stats(_):
            conn = HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/api/v1/stats", headers={"Authorization": f"Bearer {API_KEY}"})
            status = conn.getresponse().status
            conn.close()
            return status

        with ThreadPoolExecutor(max_workers=150) as pool:
            statuses = list(pool.map(stats, range(300)))
        assert sorted(statuses).count(200) == 10 and statuses.count(429) == 290, sorted(set(statuses))
        conn = HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        body = conn.getresponse().read().decode()
        errors = [line for line in body.splitlines() if line.startswith("otp_rate_limit_store_errors_total")]
        assert all(float(line.split()[-1]) == 0 for line in errors), errors  # (no line at all until one fails)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@needs_redis_server
def test_requests_in_flight_share_a_round_trip_and_are_each_counted(own_redis):
    """200 checks at once (address then client): fewer pipelines than checks, exactly the limit allowed,
    the refused ones spending nothing of the client's budget, and nothing counted in process instead."""
    limiter = RateLimiter({"address": "50/minute", "client:verify": "1000/minute"}, own_redis.url)

    async def run():
        return await asyncio.gather(*(limiter.check([("address", "a"), ("client:verify", "c")]) for _ in range(200)))

    answers = asyncio.run(run())
    assert sum(d[0].allowed for d in answers) == 50 and all(len(d) == 2 for d in answers if d[0].allowed)
    assert 1 <= limiter.pipelines < 200 and limiter.fallbacks == 0
    client = RateLimiter({"client:verify": "1000/minute"}, own_redis.url)
    assert asyncio.run(client.check([("client:verify", "c")]))[0].remaining == 1000 - 50 - 1


@needs_redis_server
def test_a_script_redis_lost_is_loaded_again(own_redis):
    limiter = RateLimiter({"address": "5/minute"}, own_redis.url)

    async def run():
        first = await limiter.check([("address", "a")])
        await redis.asyncio.Redis.from_url(own_redis.url).script_flush()  # a restart or a flush
        second = await limiter.check([("address", "a")])
        return first[0], second[0]

    first, second = asyncio.run(run())
    assert (first.allowed, first.remaining, second.allowed, second.remaining) == (True, 4, True, 3)
    assert limiter.fallbacks == 0


@needs_redis_server
def test_scripts_flushed_while_pipelines_run_never_count_a_request_twice(own_redis):
    """Another client flushes Redis's scripts a few times while 2,000 checks on their own keys go through
    (one pipeline, then what the flushes sent back): calls that ran before a flush inside a pipeline are not
    sent again, so no key counts two."""
    import threading

    limiter = RateLimiter({"address": "10/minute"}, own_redis.url)

    def flusher():
        admin = redis.Redis.from_url(own_redis.url)
        for pause in (0.01, 0.02, 0.03):
            time.sleep(pause)
            admin.script_flush()

    async def run():
        return await asyncio.gather(*(limiter.check([("address", f"k{n}")]) for n in range(2000)))

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        asyncio.run(run())
    finally:
        thread.join()
    assert limiter.pipelines > 1 and limiter.fallbacks == 0, (limiter.pipelines, limiter.fallbacks)
    counts = [int(v) for v in redis.Redis.from_url(own_redis.url).mget(redis.Redis.from_url(own_redis.url).keys("*"))]
    assert counts and max(counts) == 1, (sorted(set(counts)), limiter.pipelines, limiter.fallbacks)
