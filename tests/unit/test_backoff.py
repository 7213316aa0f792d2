"""The worker's retry policy: one jittered backoff for every failed attempt,
including a refusal after login (issue 15 item 2b)."""

from __future__ import annotations

from twisted.internet.task import Clock

from buildbot_furl.worker.service import MAX_DELAY, STABLE_AFTER, Backoff, retry_delay


def no_jitter(mean: float, sigma: float) -> float:
    return mean


def test_retry_delay_doubles_to_the_cap_and_is_jittered() -> None:
    assert retry_delay(0) == 0.0
    assert [retry_delay(n, no_jitter) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay(10_000, no_jitter) == MAX_DELAY
    assert retry_delay(1, lambda m, s: -5.0) == 0.5  # never a hammer
    spread = {round(retry_delay(4), 3) for _ in range(50)}
    assert len(spread) > 10 and all(0.5 <= d <= MAX_DELAY * 1.2 for d in spread)


def test_a_refused_attach_waits_and_its_hangup_is_not_counted_twice() -> None:
    b = Backoff(Clock(), no_jitter)
    assert b.refused() == 1
    assert b.lost() == 1  # the master hangs up after the refusal: the same wait
    assert b.refused() == 2
    assert b.lost() == 2
    assert b.attempts == 2


def test_a_link_dropped_right_after_the_attach_is_a_failed_attempt() -> None:
    clock = Clock()
    b = Backoff(clock, no_jitter)
    delays = []
    for _ in range(8):  # the master drops the worker each time right after the attach
        b.attached()
        clock.advance(0.2)
        delays.append(b.lost())
    # a lone drop (a network reset?) is redialed at once; a second one in a row waits
    assert delays == [0, 1, 2, 4, 8, 16, 32, 60]
    assert b.attempts == 8


def test_a_link_that_held_is_redialed_at_once_and_resets_the_count() -> None:
    clock = Clock()
    b = Backoff(clock, no_jitter)
    b.failed()
    b.failed()
    b.attached()
    clock.advance(STABLE_AFTER)
    assert b.attempts == 0
    assert b.lost() == 0.0  # a session is waiting: no delay
    assert b.failed() == 1  # and the next failure starts from the bottom


def test_a_resumed_session_is_taken_back_at_once_after_any_cut() -> None:
    clock = Clock()
    b = Backoff(clock, no_jitter)
    b.failed()  # a cut during the handshake
    for _ in range(10):  # network resets right after each reattach
        b.attached(resumed=True)
        clock.advance(0.2)
        assert b.lost() == 0.0
    assert b.failed() == 1


def test_while_a_session_waits_no_wait_outlasts_a_quarter_of_its_grace(tmp_path) -> None:
    """A link cut again and again must not back off past the master's grace
    period: the session and its commands would end (found by the soak)."""
    from twisted.internet.task import Clock

    from buildbot_furl.furl import new_swissnum, parse_furl
    from buildbot_furl.layout import WorkerPaths
    from buildbot_furl.worker.service import WorkerService

    from buildbot_furl.testing.fakelink import FakeDialer, attach_answer

    furl = parse_furl(f"pb://{'a' * 32}@tcp:127.0.0.1:1/{new_swissnum()}")
    dialer = FakeDialer()
    svc = WorkerService(WorkerPaths(str(tmp_path)), furl, clock=Clock(), dial=dialer)
    svc.link.start()
    assert svc._within_grace(72.0) == 72.0  # no session: the plain backoff
    dialer.connect().answer("attach", attach_answer(grace=60.0))  # a session, grace 60 s
    assert svc._within_grace(72.0) == 15.0 and svc._within_grace(4.0) == 4.0
    svc.switch_furl(parse_furl(f"pb://{'a' * 32}@tcp:127.0.0.1:2/{new_swissnum()}"))
    dialer.connect().answer("attach", attach_answer(grace=2.0))
    assert svc._within_grace(72.0) == 1.0
