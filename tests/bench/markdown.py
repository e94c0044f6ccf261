"""The report's small pieces of Markdown: a table, a target's verdict, the date."""

from __future__ import annotations

import datetime


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
