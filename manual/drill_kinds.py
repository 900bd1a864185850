"""The drill kinds and speed limit, apart from manual/drills.py so the command line can offer them as
choices without building the drill scenarios' models (`rollbackctl --help` stays fast)."""

from __future__ import annotations

from typing import Literal, get_args

# Kinds, in the order `drill list` shows them (the type and the tuple: one list).
Kind = Literal["p0", "rollback", "degradation", "canary", "hl_down_rollback"]
KINDS: tuple[str, ...] = get_args(Kind)
MAX_SPEED = 600  # 10 days of canary in 24 minutes; beyond it health-check intervals fall below a second
