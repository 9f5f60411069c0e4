"""The guests' network identities on the testbed: one address, MAC and tap name per guest.

Guest `i` answers at 10.241.0.(100+i) with MAC 52:54:00:f1:00:(0x64+i) wherever it runs, and
plugs into a tap of the same name on every hypervisor host (a VM keeps its address and MAC
when it moves; the destination's QEMU opens the tap of the same name there). Guest 0 is the
guest of a single-VM run: its tap is `<tb>-tap`, made with the host; the others' taps
(`<tb>-t1`, `<tb>-t2`, ...) are made when asked for (`Testbed.add_guest_taps`). All of them fall in
GUEST_SUBNET, the client host's route with a short retransmission timeout (testbed/network.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmigrate.errors import UsageError

MAX_GUESTS = 28  # 10.241.0.100 … .127: the top of GUEST_SUBNET
FIRST_GUEST_HOST = 100  # guest 0's last address byte
GUEST_SUBNET = "10.241.0.96/27"
_NET = "10.241.0"
_MAC_PREFIX = "52:54:00:f1:00"


@dataclass(frozen=True)
class GuestNic:
    """Guest `index`'s network identity (0 … MAX_GUESTS-1)."""

    index: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_GUESTS:
            raise UsageError(
                f"guest {self.index} does not exist: a testbed has guests 0 to {MAX_GUESTS - 1}"
            )

    @property
    def ip(self) -> str:
        """The guest's address (a /24 on the testbed's switch)."""
        return f"{_NET}.{FIRST_GUEST_HOST + self.index}"

    @property
    def mac(self) -> str:
        """The guest's MAC address (a locally administered QEMU one, 52:54:00:…)."""
        return f"{_MAC_PREFIX}:{FIRST_GUEST_HOST + self.index:02x}"

    def tap(self, prefix: str) -> str:
        """The guest's tap on each hypervisor host of testbed `prefix` (≤ 15 characters)."""
        return f"{prefix}-tap" if self.index == 0 else f"{prefix}-t{self.index}"


GUEST0 = GuestNic(0)


def every_guest() -> list[GuestNic]:
    """Every guest identity a testbed has."""
    return [GuestNic(index) for index in range(MAX_GUESTS)]


def tap_pattern(prefix: str) -> re.Pattern[str]:
    """Matches the name of any guest's tap of testbed `prefix` (in a command line, say)."""
    return re.compile(rf"(?<![\w-]){re.escape(prefix)}-t(ap|[0-9]+)(?![\w-])")
