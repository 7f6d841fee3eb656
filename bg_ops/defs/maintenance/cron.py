"""Five-field cron expressions (UTC), for schedules whose time comes from configuration.

Dagster fixes a schedule's cron when definitions load, and bg_ops reads no configuration at
import time; so the database backup schedule ticks every minute and asks ``matches`` whether
``BG_OPS_DB_BACKUP_CRON`` names that minute. Fields: minute hour day-of-month month
day-of-week, each ``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma
list of those; weekdays 0-7 (0 and 7 are Sunday) or ``sun``..``sat``, months ``jan``..``dec``.
As in cron, when both day fields are restricted a day matches either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_NAMES = {
    3: {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    4: {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
}


class CronError(ValueError):
    pass


@dataclass(frozen=True)
class CronSpec:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def matches(self, when: datetime) -> bool:
        """Whether the minute of ``when`` (read in its own zone; pass UTC) is one this names."""
        if when.minute not in self.minutes or when.hour not in self.hours or when.month not in self.months:
            return False
        day_ok = when.day in self.days
        weekday_ok = (when.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok


def _number(text: str, index: int) -> int:
    names = _NAMES.get(index, {})
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise CronError(f"{_FIELDS[index][0]} {text!r} is not a number")
    return int(text)


def _field(text: str, index: int) -> frozenset[int]:
    name, low, high = _FIELDS[index]
    values: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name} step {step_text!r} is not a positive number")
            step = int(step_text)
        if rng == "*":
            start, end = low, high
        elif "-" in rng:
            a, _, b = rng.partition("-")
            start, end = _number(a, index), _number(b, index)
        else:
            start = _number(rng, index)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise CronError(f"{name} {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


def parse_cron(expression: str) -> CronSpec:
    fields = (expression or "").split()
    if len(fields) != 5:
        raise CronError(f"{len(fields)} field(s), cron needs 5")
    parsed = [_field(text, i) for i, text in enumerate(fields)]
    return CronSpec(expression=" ".join(fields), minutes=parsed[0], hours=parsed[1], days=parsed[2],
                    months=parsed[3], weekdays=parsed[4], days_restricted=not fields[2].startswith("*"),
                    weekdays_restricted=not fields[4].startswith("*"))
