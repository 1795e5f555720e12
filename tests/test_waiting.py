"""The collective wait policy (hvams/protocol/waiting.py)."""
import time

from hvams.protocol.waiting import WaitPolicy, policy_for


class Request:
    """A fake nonblocking request that completes on its k-th Test (or at a time)."""

    def __init__(self, done_after: int = 0, done_at: float | None = None):
        self.tests, self.done_after, self.done_at = 0, done_after, done_at

    def Test(self):
        self.tests += 1
        if self.done_at is not None:
            return time.perf_counter() >= self.done_at
        return self.tests > self.done_after


def test_wait_returns_only_when_the_request_completes():
    r = Request(done_after=500)
    WaitPolicy(spin_s=0.0, nap_s=1e-6).wait(r)
    assert r.tests == 501
    r = Request(done_after=0)
    WaitPolicy().wait(r)
    assert r.tests == 1


def test_napping_tests_far_less_often_than_spinning():
    done = time.perf_counter() + 0.05
    spin = Request(done_at=done)
    WaitPolicy(spin_s=1.0).wait(spin)
    nap = Request(done_at=time.perf_counter() + 0.05)
    WaitPolicy(spin_s=0.0, nap_s=1e-3).wait(nap)
    assert time.perf_counter() >= done
    # 50 ms of napping in 1 ms sleeps: at most ~50 tests; spinning makes thousands.
    assert nap.tests <= 60 < 1000 < spin.tests


def test_policy_naps_at_once_only_on_an_oversubscribed_host():
    assert policy_for(6, cores=2).spin_s == 0.0
    assert policy_for(2, cores=2).spin_s > 0
    assert policy_for(1, cores=16).spin_s > 0
