"""A node's side of async scheduling (`--helix-async`): tokens handed from the last node straight to the first.

Under async scheduling the coordinator sends a request's next decode step before the token it decodes has come
back (vLLM's AsyncScheduler, as its pipeline parallelism does with its V2 runner), so the coordinator is off the
chain's critical path: the route's last node sends each token it samples to the first node (`Sampled`), and the
first node holds a step that lacks its token until that token is there. Two more things follow:

- a request that stopped (an EOS, a stop string) was already scheduled once more; the coordinator frees it, and
  that extra step may reach a downstream node after the Free did: the node drops the freed request's share of the
  step instead of failing the step;
- a held step whose request is freed meanwhile (its previous batch failed on a node) loses that request's item.
"""

from __future__ import annotations

from collections.abc import Iterable

from vllm_helix import wire as p
from vllm_helix.wire import Received

FREED_REMEMBERED = 4096  # recently freed requests whose late steps a node drops


class AsyncFeed:
    def __init__(self, is_first: bool, is_last: bool) -> None:
        self.is_first, self.is_last = is_first, is_last  # this node's place on its routes
        self.requests: set[str] = set()  # the async requests this node holds
        self.prompt_len: dict[str, int] = {}  # first node: each async request's prompt length (decode starts there)
        self.tokens: dict[str, tuple[int, int]] = {}  # first node: request -> (position, token) of its latest token
        self.held: list[Received] = []  # first node: steps waiting for a token, in arrival order
        self.first_of: dict[str, str] = {}  # last node: each async request's first node
        self.freed: dict[str, None] = {}  # async requests freed lately, oldest first

    def add(self, request_id: str, new: p.NewRequest) -> None:
        if not new.sampled_to_first:
            return
        self.requests.add(request_id)
        if self.is_first:
            self.prompt_len[request_id] = len(new.prompt_token_ids)
        if self.is_last:
            self.first_of[request_id] = new.route[0]

    # ------------------------------------------------------------------ first node

    def _awaited(self, item: p.Item) -> bool:
        """A decode step sent before its token was known."""
        prompt = self.prompt_len.get(item.request_id)
        return prompt is not None and not item.token_ids and item.num_tokens == 1 and item.start_position >= prompt

    def _missing(self, item: p.Item) -> bool:
        """It waits for a token that has not come yet."""
        return self._awaited(item) and self.tokens.get(item.request_id, (-1,))[0] != item.start_position

    def split(self, received: Received) -> tuple[Received | None, Received | None]:
        """A step at the first node as (what runs now, what is held): the items that lack their token, and those of
        requests with an earlier step held (a request's steps run in order), wait; the rest, prefill chunks of new
        requests say, run now. A first node's steps carry no tensors, so they split freely."""
        step = received.message
        if not self.prompt_len or not isinstance(step, p.Step):
            return received, None
        # held before it: step ids grow, and a request's steps come in order (a step released and taken again
        # is not held behind later ones)
        blocked = {item.request_id for held in self._held_steps() if held.step_id < step.step_id
                   for item in held.items}
        wait = [i.request_id in blocked or self._missing(i) for i in step.items]
        if not any(wait):
            return received, None
        if all(wait):
            return None, received
        return (_part(received, [i for i, w in zip(step.items, wait, strict=True) if not w]),
                _part(received, [i for i, w in zip(step.items, wait, strict=True) if w]))

    def hold(self, received: Received) -> None:
        self.held.append(received)

    def _held_steps(self) -> list[p.Step]:
        return [r.message for r in self.held]  # type: ignore[misc]  # only Steps are held

    def token_ids(self, item: p.Item) -> list[int]:
        """The token the item decodes: as sent, or the one the last node handed over."""
        if not self._awaited(item):
            return item.token_ids  # (not copied: nothing changes it)
        return [self.tokens[item.request_id][1]]

    def on_sampled(self, tokens: Iterable[tuple[str, int, int]], at: float) -> list[Received]:
        """Take the last node's tokens (received at `at`); returns the held steps that now have all theirs, in
        arrival order, as arrived when their last token did (tracing: waiting for it is not the node's time, and
        `held_at` keeps when the step itself came)."""
        for request_id, position, token in tokens:
            if request_id in self.prompt_len:
                self.tokens[request_id] = (position, token)
        ready, still, blocked = [], [], set[str]()
        for held, step in zip(self.held, self._held_steps(), strict=True):
            if any(item.request_id in blocked or self._missing(item) for item in step.items):
                blocked.update(item.request_id for item in step.items)  # their later steps stay behind this one
                still.append(held)
            else:
                ready.append(Received(held.peer, step, held.tensors, max(held.at, at), held_at=held.at))
        self.held = still
        return ready

    # ------------------------------------------------------------------ last node

    def handoffs(self, sampled: Iterable[tuple[str, int, int]]) -> dict[str, p.Sampled]:
        """The Sampled message for each first node, of the tokens this (last) node just sampled."""
        by_first: dict[str, list[tuple[str, int, int]]] = {}
        for request_id, position, token in sampled:
            first = self.first_of.get(request_id)
            if first is not None:
                by_first.setdefault(first, []).append((request_id, position, token))
        return {first: p.Sampled(tokens) for first, tokens in by_first.items()}

    # ------------------------------------------------------------------ any node

    def gone(self, step: p.Step) -> set[str]:
        """This step's requests that were freed here already: a step sent before they stopped."""
        return {item.request_id for item in step.items if item.new is None and item.request_id in self.freed}

    def forget(self, request_ids: Iterable[str]) -> None:
        """These requests were freed: nothing more of theirs is awaited, and late steps of theirs are dropped."""
        wanted = set(request_ids)
        for request_id in wanted & self.requests:
            self.requests.discard(request_id)
            self.prompt_len.pop(request_id, None)
            self.first_of.pop(request_id, None)
            self.tokens.pop(request_id, None)
            self.freed[request_id] = None
        while len(self.freed) > FREED_REMEMBERED:
            del self.freed[next(iter(self.freed))]
        self.held = [_without(r, wanted) for r in self.held]
        self.held = [r for r, step in zip(self.held, self._held_steps(), strict=True) if step.items]

    def clear(self) -> None:
        """Out of routing: the node forgets every request."""
        for table in (self.requests, self.prompt_len, self.tokens, self.first_of, self.freed):
            table.clear()
        self.held.clear()


def _without(received: Received, request_ids: set[str]) -> Received:
    step = received.message
    assert isinstance(step, p.Step)
    if not any(item.request_id in request_ids for item in step.items):
        return received
    return _part(received, [item for item in step.items if item.request_id not in request_ids])


def _part(received: Received, items: list[p.Item]) -> Received:
    """Some of a (first node's, tensorless) step's items, as a step of their own with the same id."""
    step = received.message
    assert isinstance(step, p.Step) and not received.tensors
    return Received(received.peer, p.Step(step.step_id, items), [], received.at, received.held_at)
