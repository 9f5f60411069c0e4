"""Post-copy through a broken link: once the VM runs on the destination, neither host can run
it alone (the destination has its state, the source the pages not yet sent), so a stream that
breaks must be resumed, not cancelled.

QEMU notices a dead link only when TCP gives up (minutes); the watch notices sooner: a
post-copy stream that moves no byte for `stall_s` is paused on both ends (QEMU's migrate-pause,
libvirt's post-copy abort), then reconnected every `retry_s` (migrate-recover on the
destination + migrate resume on the source; libvirt's POSTCOPY_RESUME) until it takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vmigrate.errors import HypervisorError
from vmigrate.hypervisor.base import Domain, Migration, MigrationStats, MigrationStatus, RunState

log = logging.getLogger(__name__)

#: A post-copy stream that moves no byte for this long is taken for broken.
STALL_S = 1.0
#: How often a paused post-copy tries to reconnect.
RETRY_S = 0.5

IN_POSTCOPY = (
    MigrationStatus.POSTCOPY,
    MigrationStatus.POSTCOPY_PAUSED,
    MigrationStatus.POSTCOPY_RECOVER,
)


@dataclass
class PostcopyPause:
    """One interval a post-copy migration spent paused: why, since when, until when, and how
    many reconnections it took."""

    paused_ns: int
    cause: str
    recovered_ns: int | None = None
    attempts: int = 0


class VmLost(Exception):
    """Neither host can run the VM any more (one end died after the switch)."""


class PostcopyWatch:
    """Follows a post-copy migration poll by poll: pauses a stalled stream, reconnects a paused
    one, and says when the VM is lost (an end died) or recovery took too long."""

    def __init__(
        self,
        job: Migration,
        source: Domain,
        give_up_s: float,
        stall_s: float = STALL_S,
        retry_s: float = RETRY_S,
    ) -> None:
        self.job = job
        self.source = source
        self.give_up_s = give_up_s
        self.stall_s = stall_s
        self.retry_s = retry_s
        self.pauses: list[PostcopyPause] = []
        self.actions: list[tuple[int, str]] = []
        self.entered = False  # the VM has run on the destination: the source must stay stopped
        self._moved_bytes = -1
        self._moved_ns = 0
        self._tried_ns = 0
        self._said_stalled = False

    @property
    def _open(self) -> PostcopyPause | None:
        pause = self.pauses[-1] if self.pauses else None
        return pause if pause is not None and pause.recovered_ns is None else None

    async def observe(self, stats: MigrationStats, now_ns: int) -> None:
        """Act on one poll.

        :raise VmLost: an end died after the switch.
        :raise HypervisorError: the stream stayed paused longer than `give_up_s`."""
        if stats.status not in IN_POSTCOPY and stats.status != MigrationStatus.COMPLETED:
            return
        self.entered = self.entered or stats.status in IN_POSTCOPY
        pause = self._open
        if stats.status in (MigrationStatus.POSTCOPY, MigrationStatus.COMPLETED):
            if pause is not None:
                pause.recovered_ns = now_ns
                self._act(now_ns, f"post-copy recovered after {pause.attempts} reconnection(s)")
            if stats.status == MigrationStatus.POSTCOPY:
                await self._watch_stall(stats, now_ns)
            return
        if pause is None:
            pause = self._pause_opened(now_ns, "the stream broke")
        await self._check_both_ends()
        if (now_ns - pause.paused_ns) / 1e9 > self.give_up_s:
            raise HypervisorError(
                f"post-copy stayed paused for {self.give_up_s:g} s (migration.timeout_s) and "
                "did not reconnect"
            )
        if (
            stats.status == MigrationStatus.POSTCOPY_PAUSED
            and self.job.recovers_postcopy
            and now_ns - self._tried_ns >= self.retry_s * 1e9
        ):
            self._tried_ns = now_ns
            pause.attempts += 1
            try:
                await self.job.recover_postcopy()
            except HypervisorError as exc:
                log.info("post-copy reconnection %d: %s", pause.attempts, exc)

    async def _watch_stall(self, stats: MigrationStats, now_ns: int) -> None:
        if stats.transferred_bytes != self._moved_bytes:
            self._moved_bytes, self._moved_ns = stats.transferred_bytes, now_ns
            self._said_stalled = False
            return
        if (now_ns - self._moved_ns) / 1e9 < self.stall_s:
            return
        if not self.job.recovers_postcopy:
            if not self._said_stalled:  # once per stall: TCP may still carry the stream on
                self._said_stalled = True
                self._act(now_ns, f"post-copy stalled: no byte moved for {self.stall_s:g} s")
            return
        self._pause_opened(now_ns, f"no byte moved for {self.stall_s:g} s")
        self._moved_bytes = -1
        try:
            await self.job.pause_postcopy()
        except HypervisorError as exc:  # it may have paused by itself meanwhile
            log.warning("pausing post-copy: %s", exc)

    def _pause_opened(self, now_ns: int, cause: str) -> PostcopyPause:
        pause = PostcopyPause(paused_ns=now_ns, cause=cause)
        self.pauses.append(pause)
        self._act(now_ns, f"post-copy paused: {cause}")
        return pause

    async def _check_both_ends(self) -> None:
        for what, domain in (("destination", self.job.destination), ("source", self.source)):
            if await domain.run_state() == RunState.GONE:
                held = "running state" if what == "destination" else "pages not yet sent"
                raise VmLost(
                    f"the {what} died during post-copy, with the VM's {held}: neither host "
                    f"can run it ({domain.exit_reason() or 'gone'})"
                )

    def _act(self, now_ns: int, what: str) -> None:
        self.actions.append((now_ns, what))

    def drain_actions(self) -> list[tuple[int, str]]:
        actions, self.actions = self.actions, []
        return actions
