"""The drain as an event-driven simulation: migrations start as the policy allows, each moves
pass by pass at the bandwidth it gets, and the links are shared among them.

Bandwidth. A migration from host S to host R gets min(L_S / n_S, L_R / n_R): an equal share
of the sender's uplink among the n_S migrations it sends, and of the receiver's among the n_R
it receives — re-shared whenever a migration starts or ends. This is an approximation of TCP:
real flows are not equally fair (RTT, congestion control), and the share a migration leaves
unused on one link is not given to the others there (max-min fairness would), so the plan errs
on the slow side. The rest of the network (the switch, other traffic) is not modelled, and a
migration in its fixed-time steps (pass overhead, switch-over) keeps its share.

Each migration follows the single-migration model (migration/estimate.py) with the calibrated
constants: pre-copy pass 0 sends the touched memory's full pages; each later pass (a burst)
sends the pending bytes down to what QEMU leaves unsent at a look, K = θ - u, and the pending
becomes K plus what the guest dirtied during the burst (at most its full pages); the VM stops
once the pending fits in the budget θ = B·downtime_limit — θ, u and K at the bandwidth B it has
then. When the bandwidth stays put this is exactly `precopy_estimate` (and
`postcopy_estimate`).
Around its stream a migration holds its slot (not the links) a fixed time: before it, while
its destination is prepared (`setup_ms`), and after it, until it is seen ended (`wrapup_ms`);
so one at a time, the next starts a little after the last ended, as in a real drain.
A pre-copy whose passes stop shrinking `stall_passes` times in a row (it shares a link with
too many others) is cancelled, as migration.on_stall = "fail" does; one that cannot converge
even alone on its links (D ≥ B) is not started. Not modelled: the CPU a migration costs
either host, a dirty rate that changes over time, disks copied along (storage is taken as
shared), and the other strategies (multifd, xbzrle, compression, auto-converge's throttle).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum

from vmigrate.drain.cluster import Choice, Cluster, Host, Vm
from vmigrate.migration.estimate import (
    MAX_PASSES,
    PHYSICS,
    Estimate,
    ModelConstants,
    effective_rates,
    full_pages,
    postcopy_estimate,
    precopy_estimate,
    stop_volumes,
)

MIB = 1024 * 1024


class VmOutcome(StrEnum):
    """How a VM's migration ends in the plan."""

    MIGRATES = "migrates"
    STALLS = "stalls"  # started, cancelled once its passes stopped shrinking (links shared)
    NEVER = "never-converges"  # pre-copy cannot converge even alone on its links: not started


class Phase(Enum):
    """Where a migration is; the sending phases end when their bytes are sent, the others
    after a fixed time."""

    SETUP = "setup"  # its slot taken, its destination being prepared: not sending yet
    PASS = "pass"  # pre-copy: sending what was dirtied since the last pass
    OVERHEAD = "overhead"  # pre-copy: the fixed cost of a pass
    STOP = "stop"  # paused: the last pass and the device state go
    SWITCH = "switch"  # paused: the switch-over's fixed cost
    PULL = "pull"  # post-copy: running on the destination, its memory pulled across
    WRAPUP = "wrapup"  # ended, off the links, its slot not yet free


SENDING = frozenset({Phase.PASS, Phase.STOP, Phase.PULL})


@dataclass(frozen=True)
class Job:
    """What the simulation needs of a cluster, computed once for every candidate policy."""

    cluster: Cluster
    vms: list[Vm]
    constants: ModelConstants
    hosts: list[Host]
    host_index: dict[str, int]
    stream_bytes_s: list[float]  # each host's link, as the model's stream sees it alone
    memory_bytes: list[float]  # what pass 0 sends: the touched memory's full pages
    dirty_bytes_s: list[float]  # the dirty rate, as the model sees it
    alone_s: list[float]  # alone at the source's link rate (inf: never converges)


def prepare(cluster: Cluster, constants: ModelConstants = PHYSICS) -> Job:
    """The cluster as flat lists, with the model's view of each link and VM."""
    vms = cluster.machines()
    link = [host.link_mbit * 1e6 / 8 for host in cluster.hosts]
    index = {host.name: i for i, host in enumerate(cluster.hosts)}
    memory = [full_pages(vm.touched_mib * MIB, constants) for vm in vms]
    alone = [alone_estimate(vm, link[index[vm.host]], constants).total_time_s for vm in vms]
    return Job(
        cluster, vms, constants, list(cluster.hosts), index,
        [effective_rates(0.0, rate, constants)[1] for rate in link], memory,
        [effective_rates(vm.dirty_rate_mib_s * MIB, 0.0, constants)[0] for vm in vms],
        [math.inf if t is None else t for t in alone],
    )  # fmt: skip


def alone_estimate(vm: Vm, link_bytes_s: float, constants: ModelConstants) -> Estimate:
    """The single-migration model for `vm` alone on a link of this rate."""
    if vm.strategy == "postcopy":
        return postcopy_estimate(vm.touched_mib * MIB, link_bytes_s, constants)
    return precopy_estimate(
        vm.touched_mib * MIB, vm.dirty_rate_mib_s * MIB, link_bytes_s, vm.downtime_limit_ms,
        constants,
    )  # fmt: skip


@dataclass
class Trace:
    """What happened to each VM (by index) in one simulated drain."""

    outcome: list[VmOutcome]
    start_s: list[float | None]
    end_s: list[float | None]
    paused_s: list[float | None]
    pull_s: list[float]
    sent_bytes: list[float]
    passes: list[int | None]
    freed_s: list[float | None]  # its slot free again: the wrap-up after its end

    @classmethod
    def empty(cls, n: int) -> Trace:
        return cls(
            [VmOutcome.NEVER] * n, [None] * n, [None] * n, [None] * n, [0.0] * n, [0.0] * n,
            [None] * n, [None] * n,
        )  # fmt: skip

    @property
    def total_time_s(self) -> float:
        """From the first release to the last slot freed."""
        return max((freed for freed in self.freed_s if freed is not None), default=0.0)


@dataclass(slots=True, eq=False)
class _Flow:
    """One migration under way."""

    vm: int
    src: int
    dst: int
    memory: float
    dirty: float
    limit_ms: float
    postcopy: bool
    start: float = 0.0  # the stream's start, after the setup
    phase: Phase = Phase.SETUP
    left: float = 0.0  # bytes the sending phase has still to send
    rate: float = 0.0  # the stream's rate now, bytes/s
    since: float = 0.0  # when `left` was last brought up to date
    version: int = 0  # bumped on every reschedule: older heap entries are stale
    volume: float = 0.0  # the pending bytes at the last look
    keep: float = 0.0  # what this pass leaves unsent (0 in pass 0: it sends all)
    best: float = math.inf  # the smallest pending since pass 1
    stale: int = 0  # passes in a row that did not shrink below `best`
    passes: int = 0
    sent: float = 0.0
    pass_start: float = 0.0
    paused_at: float = 0.0
    resumed_at: float = 0.0


class _Drain:
    """The event loop of one simulated drain."""

    def __init__(
        self, job: Job, destination: list[int], choice: Choice, queues: list[deque[int]],
        rank: list[int],
    ) -> None:  # fmt: skip
        self.job = job
        self.destination = destination
        self.parallel_per_host = choice.parallel_per_host
        self.parallel_total = choice.parallel_total or len(job.vms)
        self.stall_passes = job.cluster.policy.stall_passes
        self.queues = queues  # per sending host, its VMs in start order
        self.rank = rank  # each VM's place in the start order
        self.trace = Trace.empty(len(job.vms))
        self.now = 0.0
        self.active = 0  # migrations holding a slot
        self.slots = [0] * len(job.hosts)  # ... per sending host
        self.seq = 0
        self.heap: list[tuple[float, int, int, _Flow]] = []  # (due, seq, version, flow)
        self.out: list[list[_Flow]] = [[] for _ in job.hosts]  # what each host sends
        self.into: list[list[_Flow]] = [[] for _ in job.hosts]  # what each host receives
        self.ready = [(rank[q[0]], h) for h, q in enumerate(queues) if q]  # (head's rank, host)
        heapq.heapify(self.ready)

    def run(self) -> Trace:
        self._fill()
        handlers = self._handlers()
        while self.heap:
            due, _, version, flow = heapq.heappop(self.heap)
            if version == flow.version:
                self.now = due
                handlers[flow.phase](flow)
        return self.trace

    def _handlers(self) -> dict[Phase, Callable[[_Flow], None]]:
        return {
            Phase.SETUP: self._begin,
            Phase.PASS: self._pass_sent,
            Phase.OVERHEAD: self._next_pass,
            Phase.STOP: self._stopped,
            Phase.SWITCH: self._resumed,
            Phase.PULL: lambda flow: self._finish(flow, VmOutcome.MIGRATES),
            Phase.WRAPUP: self._free,
        }

    def _fill(self) -> None:
        """Start queued migrations while the cluster and their hosts have room."""
        while self.ready and self.active < self.parallel_total:
            rank, host = heapq.heappop(self.ready)
            queue = self.queues[host]
            if queue and self.rank[queue[0]] == rank and self.slots[host] < self.parallel_per_host:
                self._start(queue.popleft())
                self._offer(host)

    def _offer(self, host: int) -> None:
        """Put `host` among the ready ones when it has room and VMs waiting (an entry whose
        host has since started its head, or filled up, is skipped by _fill)."""
        queue = self.queues[host]
        if queue and self.slots[host] < self.parallel_per_host:
            heapq.heappush(self.ready, (self.rank[queue[0]], host))

    def _start(self, vm: int) -> None:
        """Release `vm`: its slot is taken, its destination prepared."""
        job = self.job
        spec = job.vms[vm]
        flow = _Flow(
            vm, job.host_index[spec.host], self.destination[vm], job.memory_bytes[vm],
            job.dirty_bytes_s[vm], spec.downtime_limit_ms, spec.strategy == "postcopy",
        )  # fmt: skip
        self.active += 1
        self.slots[flow.src] += 1
        if job.constants.setup_ms > 0:
            self._wait(flow, Phase.SETUP, job.constants.setup_ms / 1000)
        else:
            self._begin(flow)

    def _begin(self, flow: _Flow) -> None:
        """The stream starts: the migration takes its share of the links."""
        job = self.job
        flow.start = self.now
        self.out[flow.src].append(flow)
        self.into[flow.dst].append(flow)
        self._reshare(self.out[flow.src])
        self._reshare(self.into[flow.dst])
        if flow.postcopy:
            flow.paused_at = self.now
            self._send(flow, Phase.STOP, job.constants.device_state_bytes)
        else:
            flow.volume = flow.memory
            self._next_pass(flow)

    def _reshare(self, flows: list[_Flow]) -> None:
        """Give every migration on a link whose count changed its new share."""
        stream, out, into, now = self.job.stream_bytes_s, self.out, self.into, self.now
        for flow in flows:
            rate = min(
                stream[flow.src] / len(out[flow.src]), stream[flow.dst] / len(into[flow.dst])
            )
            if rate == flow.rate:
                continue
            if flow.phase in SENDING and flow.rate:
                flow.left = max(flow.left - flow.rate * (now - flow.since), 0.0)
                flow.since = now
                flow.rate = rate
                self._schedule(flow, now + flow.left / rate)
            else:
                flow.rate = rate

    def _schedule(self, flow: _Flow, due: float) -> None:
        flow.version += 1
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, flow.version, flow))

    def _send(self, flow: _Flow, phase: Phase, nbytes: float) -> None:
        flow.phase, flow.left, flow.since = phase, nbytes, self.now
        self._schedule(flow, self.now + nbytes / flow.rate)

    def _wait(self, flow: _Flow, phase: Phase, seconds: float) -> None:
        flow.phase = phase
        self._schedule(flow, self.now + seconds)

    def _next_pass(self, flow: _Flow) -> None:
        """Stop when the pending bytes fit in the downtime at today's rate; give up on a stall
        (unless the rate grew meanwhile, as when the stalled neighbour was cancelled first)."""
        budget, kept = stop_volumes(flow.rate, flow.limit_ms, self.job.constants)
        if flow.volume <= budget:
            flow.paused_at = self.now
            self._send(flow, Phase.STOP, flow.volume + self.job.constants.device_state_bytes)
        elif flow.passes >= MAX_PASSES or (
            flow.stale >= self.stall_passes and flow.dirty >= flow.rate  # still hopeless now
        ):
            self._finish(flow, VmOutcome.STALLS)
        else:
            flow.pass_start = self.now
            flow.keep = kept if flow.passes else 0.0
            self._send(flow, Phase.PASS, flow.volume - flow.keep)

    def _pass_sent(self, flow: _Flow) -> None:
        """Pending now: what the pass left plus what the guest dirtied meanwhile; judge the
        progress."""
        flow.sent += flow.volume - flow.keep
        flow.passes += 1
        flow.volume = min(flow.keep + flow.dirty * (self.now - flow.pass_start), flow.memory)
        if flow.passes == 1 or flow.volume < flow.best:
            flow.best, flow.stale = flow.volume, 0
        else:
            flow.stale += 1
        overhead_s = self.job.constants.pass_overhead_ms / 1000
        if overhead_s > 0:
            self._wait(flow, Phase.OVERHEAD, overhead_s)
        else:
            self._next_pass(flow)

    def _stopped(self, flow: _Flow) -> None:
        if not flow.postcopy:  # post-copy's device state: the model counts its bytes in the pull
            flow.sent += flow.volume + self.job.constants.device_state_bytes
        self._wait(flow, Phase.SWITCH, self.job.constants.switchover_ms / 1000)

    def _resumed(self, flow: _Flow) -> None:
        flow.resumed_at = self.now
        if not flow.postcopy:
            self._finish(flow, VmOutcome.MIGRATES)
            return
        flow.left = flow.memory + self.job.constants.device_state_bytes
        flow.sent += flow.left
        self._send(flow, Phase.PULL, flow.left)

    def _finish(self, flow: _Flow, outcome: VmOutcome) -> None:
        """Record the VM, free its links; its slot after the wrap-up."""
        vm, trace = flow.vm, self.trace
        trace.outcome[vm] = outcome
        trace.start_s[vm], trace.end_s[vm] = flow.start, self.now
        trace.sent_bytes[vm] = flow.sent
        if outcome == VmOutcome.MIGRATES:
            trace.paused_s[vm] = flow.resumed_at - flow.paused_at
            trace.pull_s[vm] = self.now - flow.resumed_at
            trace.passes[vm] = flow.passes
        self.out[flow.src].remove(flow)
        self.into[flow.dst].remove(flow)
        self._reshare(self.out[flow.src])
        self._reshare(self.into[flow.dst])
        flow.version += 1  # whatever it had due is void
        if self.job.constants.wrapup_ms > 0:
            self._wait(flow, Phase.WRAPUP, self.job.constants.wrapup_ms / 1000)
        else:
            self._free(flow)

    def _free(self, flow: _Flow) -> None:
        """Its slot is free: start what may start."""
        self.trace.freed_s[flow.vm] = self.now
        self.active -= 1
        self.slots[flow.src] -= 1
        self._offer(flow.src)
        self._fill()


def simulate(job: Job, choice: Choice, order: list[int], destination: list[str]) -> Trace:
    """One drain: VMs start in `order` as the choice's parallelism allows, to `destination`;
    a pre-copy that cannot converge even alone on its links (D ≥ B) is not started."""
    dest = [job.host_index[name] for name in destination]
    queues: list[deque[int]] = [deque() for _ in job.hosts]
    stream = job.stream_bytes_s
    rank = [0] * len(job.vms)
    for position, vm in enumerate(order):
        rank[vm] = position
        src = job.host_index[job.vms[vm].host]
        alone = min(stream[src], stream[dest[vm]])
        if job.vms[vm].strategy == "postcopy" or job.dirty_bytes_s[vm] < alone:
            queues[src].append(vm)
    return _Drain(job, dest, choice, queues, rank).run()
