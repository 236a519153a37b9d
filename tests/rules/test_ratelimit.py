from relay.rules.ratelimit import TokenBucket


def test_burst_then_rate():
    b = TokenBucket(rate=10, burst=5, clock=lambda: 0.0)
    assert [b.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert b.take(0.05) is False  # half a token
    assert b.take(0.1) is True    # 0.1 s later: one token
    assert [b.take(10.0) for _ in range(6)] == [True] * 5 + [False]  # never more than the burst
