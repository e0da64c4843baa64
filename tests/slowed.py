"""A machine slowed on purpose: make a function sleep before every call (tests of deadlines)."""
import time


def slow_down(monkeypatch, owner, name: str, seconds: float) -> None:
    """Make ``owner.name`` sleep ``seconds`` before each call (undone with ``monkeypatch``)."""
    inner = getattr(owner, name)

    def slowed(*a, **kw):
        time.sleep(seconds)
        return inner(*a, **kw)

    monkeypatch.setattr(owner, name, slowed)
