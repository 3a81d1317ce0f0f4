"""`update_loop`: a loop configuration's read-modify-write is one transaction, so that concurrent
writers (the Personalizer configuration PUTs) never lose each other's update (both databases)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from sqlalchemy import Engine

from explore.errors import InvalidInput
from log.loops import LoopConfig, get_loop, put_loop, update_loop

WRITERS, UPDATES = 4, 15


def test_concurrent_read_modify_writes_lose_no_update(engine: Engine) -> None:
    stored, _ = put_loop(engine, "shop", LoopConfig(reward_wait_s=100.0))
    start = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            start.wait()
            for _ in range(UPDATES):
                # +1 s each: a lost update shows in the total
                update_loop(engine, "shop", lambda c: replace(c, reward_wait_s=c.reward_wait_s + 1))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    after = get_loop(engine, "shop")
    assert after is not None
    assert after.config.reward_wait_s == 100.0 + WRITERS * UPDATES
    assert after.config.sampling_key == stored.config.sampling_key


def test_a_refused_change_writes_nothing_and_the_key_stays(engine: Engine) -> None:
    stored, _ = put_loop(engine, "shop", LoopConfig(epsilon=0.3))

    def refuse(config: LoopConfig) -> LoopConfig:
        raise InvalidInput("no")

    with pytest.raises(InvalidInput):
        update_loop(engine, "shop", refuse)
    fresh = LoopConfig(epsilon=0.5)  # another random sampling key: never stored over the loop's
    out = update_loop(engine, "shop", lambda _c: fresh)
    assert out is not None and out.config.epsilon == 0.5
    after = get_loop(engine, "shop")
    assert after is not None and after.config.epsilon == 0.5
    assert after.config.sampling_key == stored.config.sampling_key != fresh.sampling_key
    assert update_loop(engine, "missing", lambda c: c) is None
