"""RFC 5545 recurrence rules expanded in a tenant's zone (R12, R13), with python-dateutil.

The start (``dtstart`` / ``starts_at``, stored in UTC) is turned into the tenant's local wall
time and the rule is expanded from there, so "every Monday 09:00" stays 09:00 local across
daylight-saving changes; each occurrence is then returned in UTC.

Accepted text: ``FREQ=WEEKLY;BYDAY=MO``, with or without the ``RRULE:`` prefix. A ``DTSTART``
line inside the text is ignored (the row's column is authoritative). ``UNTIL`` may be given in
UTC (``…Z``, as RFC 5545 asks when the start has a zone) or as a floating local time or a
date, which is read as tenant-local wall time (a date: until the end of that day).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr


class RecurrenceError(ValueError):
    """A recurrence rule that cannot be read; the message names the rule and the problem."""


_UNTIL = re.compile(r"UNTIL=([0-9]{8})(T[0-9]{6})?(Z)?", re.IGNORECASE)


def normalize_rule(text: str, zone: ZoneInfo) -> str:
    """One ``RRULE`` value with a UTC ``UNTIL`` (see the module docstring)."""
    lines = [line.strip() for line in (text or "").replace("\r", "\n").split("\n") if line.strip()]
    rules = [line for line in lines if not line.upper().startswith(("DTSTART", "EXDATE", "RDATE"))]
    if len(rules) != 1:
        raise RecurrenceError(f"recurrence rule {text!r}: expected one RRULE (e.g. FREQ=WEEKLY;BYDAY=MO)")
    rule = rules[0]
    if rule.upper().startswith("RRULE:"):
        rule = rule[len("RRULE:"):]

    def to_utc(m: re.Match) -> str:
        day, clock, zulu = m.group(1), m.group(2), m.group(3)
        if zulu:
            return m.group(0)
        if clock:
            local = datetime.strptime(day + clock, "%Y%m%dT%H%M%S")
        else:  # a date: the whole local day is included
            local = datetime.combine(datetime.strptime(day, "%Y%m%d").date(), time(23, 59, 59))
        return "UNTIL=" + local.replace(tzinfo=zone).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")

    return _UNTIL.sub(to_utc, rule)


def occurrences(rule_text: str, start_utc: datetime, zone: ZoneInfo, after: datetime, before: datetime) -> list[datetime]:
    """UTC occurrences of the rule in [after, before] (both aware), the start counted as the first."""
    local_start = start_utc.astimezone(zone)
    try:
        rule = rrulestr(normalize_rule(rule_text, zone), dtstart=local_start)
        # Aware bounds in another zone than the occurrences: compared as instants.
        found = rule.between(after.astimezone(UTC) - timedelta(seconds=1), before.astimezone(UTC) + timedelta(seconds=1),
                             inc=True)
    except RecurrenceError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise RecurrenceError(f"recurrence rule {rule_text!r}: {exc}") from None
    out = []
    for occurrence in found:
        # rrule keeps the wall time and the zone object; zoneinfo gives the offset valid on that
        # date (a wall time skipped by a DST jump moves forward by the jump).
        utc = occurrence.astimezone(UTC)
        if after <= utc <= before:
            out.append(utc)
    return out
