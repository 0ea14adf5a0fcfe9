"""Scripts run on each thread's own connection (orchestrator.health.direct) against a real
Redis: replies never cross threads, a flushed script cache and a killed connection are
survived."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import redis

from orchestrator.health.direct import DirectScripts

ECHO = "return {ARGV[1], redis.call('incr', KEYS[1])}"


def test_each_thread_gets_its_own_replies(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    script = client.register_script(ECHO)
    scripts = DirectScripts(client)
    key = "test:direct:count"
    client.delete(key)

    def calls(thread: int) -> list[tuple[str, str]]:
        out = []
        for i in range(200):
            sent = f"{thread}:{i}"
            got, _ = scripts.run(script, [key], [sent])
            out.append((sent, got))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [pair for chunk in pool.map(calls, range(16)) for pair in chunk]
    assert all(sent == got for sent, got in results)
    assert int(client.get(key) or 0) == 16 * 200  # each call ran exactly once


def test_a_flushed_script_cache_and_a_killed_connection_are_survived(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True, client_name="direct-test")
    script = client.register_script(ECHO)
    scripts = DirectScripts(client)
    key = "test:direct:survive"
    client.delete(key)
    assert scripts.run(script, [key], ["a"]) == ["a", 1]

    client.script_flush()  # the server forgets the script: NOSCRIPT, then EVAL
    assert scripts.run(script, [key], ["b"]) == ["b", 2]
    assert client.script_exists(script.sha) == [True]  # EVAL cached it again

    # the scripts' connection dropped by the server: reconnected and tried again
    ours = [c["id"] for c in client.client_list() if c["name"] == "direct-test"
            and c["cmd"] in ("evalsha", "eval")]
    assert len(ours) == 1
    assert client.client_kill_filter(_id=ours[0]) == 1
    assert scripts.run(script, [key], ["c"]) == ["c", 3]
