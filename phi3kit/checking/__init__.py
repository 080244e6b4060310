"""`phi3kit check`: each machine proves its own routes (known answers, the device that really ran, drivers),
and the instructor merges the room's reports into one table.

`kit.check_machine()` is the function the command runs; `workshop.check` (a pack's files) is another thing.
"""

from __future__ import annotations

from .results import MachineReport, RouteResult
from .room import read_room, room_table
from .run import check_machine, plan

__all__ = ["MachineReport", "RouteResult", "check_machine", "plan", "read_room", "room_table"]
