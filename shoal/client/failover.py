"""Which node a client talks to and when it moves on: the API addresses it knows (given,
from the cluster file, learnt from GET /v1/nodes), the failures that mean "this node is
gone, ask another", and the bounded retry policy that walks the addresses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import httpx
import tenacity

ROUNDS = 3              # each known address is tried about this many times before giving up
FIRST_WAIT_S = 0.05     # the pause before the first retry; it doubles (with jitter) up to
MAX_WAIT_S = 1.0

# The request never reached a node: always safe to send again elsewhere.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# The node went away while it had the request (a SIGKILLed node resets its connections):
# safe to send again only when the request is idempotent.
CUT_OFF = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
UNAVAILABLE = 503       # the node answers, but has lost etcd (or is shutting down)


def split_addresses(address: str | Iterable[str]) -> list[str]:
    """'http://a:1, http://b:2' or a list of them -> distinct addresses, in order."""
    items = address.split(",") if isinstance(address, str) else list(address)
    return list(dict.fromkeys(a.strip().rstrip("/") for a in items if a and a.strip()))


@dataclass(frozen=True)
class NodeDown:
    """One node failed one request: what a try answers instead of a response, so that the
    client moves to another node. Never leaves the client."""
    address: str
    why: str


def node_failure(exc: BaseException, idempotent: bool) -> str | None:
    """Why `exc` (raised by httpx for one request) means "try another node", or None when
    it does not: the request may have been carried out and must not be sent twice."""
    if isinstance(exc, NOT_SENT):
        return str(exc) or type(exc).__name__
    if idempotent and isinstance(exc, CUT_OFF):
        return f"connection lost ({exc or type(exc).__name__})"
    return None


def unavailable(status: int, idempotent: bool) -> bool:
    """An answer that says "ask another node" (this one cannot reach etcd). A request that
    is not idempotent may have been committed before etcd went away: not sent again."""
    return status == UNAVAILABLE and idempotent


@dataclass
class NodeRing:
    """The addresses a client knows, the one it uses now first. A failed node goes to the
    back; nodes learnt from the cluster join at the back, after the ones given."""
    addresses: list[str]
    down: set[str] = field(default_factory=set)   # failed since they last answered

    def __post_init__(self):
        self.addresses = split_addresses(self.addresses)
        if not self.addresses:
            raise ValueError("no node address given")

    @property
    def current(self) -> str:
        return self.addresses[0]

    def failed(self, address: str) -> None:
        """`address` did not answer: use the next one that has not failed lately."""
        self.down.add(address)
        if address in self.addresses:
            self.addresses.remove(address)
            self.addresses.append(address)
        if len(self.down) >= len(self.addresses):
            self.down.clear()      # all failed once: start a new round in the same order
        while self.current in self.down:
            self.addresses.append(self.addresses.pop(0))

    def answered(self, address: str) -> None:
        self.down.discard(address)

    def learn(self, addresses: Iterable[str]) -> None:
        """Add nodes the cluster listed (GET /v1/nodes) that this ring does not know."""
        for a in split_addresses(addresses):
            if a not in self.addresses:
                self.addresses.append(a)


def attempts(ring_size: int) -> tenacity.AsyncRetrying:
    """The retry policy of one request, called with the function that tries the node in
    use: while it answers a NodeDown (it has already moved the ring on), try again after
    a pause a little longer each time; after ROUNDS rounds of every known node, answer
    the last NodeDown. What the function raises is not retried."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_result(lambda outcome: isinstance(outcome, NodeDown)),
        stop=tenacity.stop_after_attempt(ROUNDS * max(1, ring_size)),
        wait=tenacity.wait_exponential(multiplier=FIRST_WAIT_S, max=MAX_WAIT_S) + tenacity.wait_random(0, FIRST_WAIT_S),
        retry_error_callback=lambda state: state.outcome.result())
