"""The UserBehavior-2017 schema and the numbers the study publishes about it (thesis Table 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

BEHAVIORS: tuple[str, ...] = ("pv", "cart", "fav", "buy")
COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id", "behavior", "timestamp")
ID_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id")
FORMAT = ",".join(COLUMNS)  # one row of the published file, no header

# [2017-11-25 00:00, 2017-12-04 00:00) Asia/Shanghai (UTC+8), in Unix seconds: the log's nine days.
WINDOW: tuple[int, int] = (1_511_539_200, 1_512_316_800)

# The follow-up study's published tables, as data with their source (`mbkit.study.published` reads Tables 2-3).
THESIS_TABLES: dict = json.loads((Path(__file__).with_name("thesis_tables.json")).read_text())
# Table 1 of the thesis, in its column order.
STATS_COLUMNS: tuple[str, ...] = tuple(THESIS_TABLES["table1_statistics"]["columns"])
THESIS_STATS: dict[str, dict[str, int]] = {
    row: dict(zip(STATS_COLUMNS, THESIS_TABLES["table1_statistics"][row])) for row in ("raw", "filtered")}

FilterMode = Literal["once", "kcore"]
FILTER_MODES: tuple[str, ...] = ("once", "kcore")
# "once" is the default because it is the only one of the two readings the published counts allow: a
# 10-core keeps >= 10 distinct purchases per user, i.e. >= 160,120 buy rows for 16,012 users, but the thesis
# reports 87,179 (and 87,179 < 10 x 24,608 on the item side too). Whether the thesis counted exactly as
# `filter_log(mode="once")` does cannot be confirmed without its code; the real file would tell.
DEFAULT_FILTER_MODE: FilterMode = "once"
