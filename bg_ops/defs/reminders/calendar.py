"""Calendar event reminders and cleanup (R12), plain logic over a session.

An event occurrence starts at ``starts_at`` (one-off) or at each occurrence of its RRULE,
expanded from ``starts_at`` as tenant-local wall time (``recurrence``). Its reminder time is
``start - remind_minutes_before``. ``calendar_reminders_due`` finds the occurrences whose
reminder time falls in the window (now - window, now] and returns one ``Due`` per recipient
(the organizer and the attendees, active users of the tenant), with period = the occurrence's
UTC start: ``send_calendar_reminders`` queues them at once, at most once per (event, recipient,
occurrence) whatever windows overlap or runs repeat.

``cleanup_expired_events`` deletes one-off events that ended more than a day ago, with their
attendees. Recurring events are kept (their series goes on).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import CalendarEvent, CalendarEventAttendee, User
from bg_ops.defs.email.enqueue import MailSettings
from bg_ops.defs.reminders.engine import Due, zone_of
from bg_ops.defs.reminders.immediate import Notice, NoticeResult, notify_now
from bg_ops.defs.reminders.recurrence import RecurrenceError, occurrences
from bg_ops.defs.tenants.logic import Tenant

DEFAULT_WINDOW_MINUTES = 5
MAX_REMIND_MINUTES = 31 * 24 * 60  # reminders further ahead than a month are not looked for
EXPIRED_AFTER = timedelta(days=1)
DELETE_BATCH = 500

CALENDAR_NOTICE = Notice(rule="calendar_event", title="Calendar event", entity_type="calendar_event")


@dataclass(frozen=True)
class Occurrence:
    event_id: int
    title: str
    starts_at: datetime  # UTC
    ends_at: datetime | None  # UTC
    remind_minutes: int
    recurring: bool
    organizer_id: int

    @property
    def remind_at(self) -> datetime:
        return self.starts_at - timedelta(minutes=self.remind_minutes)


def due_occurrences(
    session: Session, tenant: Tenant, after: datetime, until: datetime, *, errors: list[str] | None = None,
) -> list[Occurrence]:
    """Occurrences of the tenant's events whose reminder time is in (after, until]."""
    ev = CalendarEvent
    rows = session.execute(
        sa.select(ev.id, ev.title, ev.starts_at, ev.ends_at, ev.rrule, ev.remind_minutes_before, ev.organizer_id)
        .where(ev.company_id == tenant.id,
               sa.or_(
                   # One-off: the start is after the window opened, and at most a month past its end.
                   sa.and_(sa.or_(ev.rrule.is_(None), ev.rrule == ""),
                           ev.starts_at > after, ev.starts_at <= until + timedelta(minutes=MAX_REMIND_MINUTES)),
                   # Recurring: series that began before the window's look-ahead ends.
                   sa.and_(ev.rrule.is_not(None), ev.rrule != "",
                           ev.starts_at <= until + timedelta(minutes=MAX_REMIND_MINUTES)),
               ))
        .order_by(ev.id)
    ).all()
    found = []
    for r in rows:
        remind = min(max(int(r.remind_minutes_before or 0), 0), MAX_REMIND_MINUTES)
        lead = timedelta(minutes=remind)
        duration = (r.ends_at - r.starts_at) if r.ends_at is not None else None
        if r.rrule:
            try:
                starts = occurrences(r.rrule, r.starts_at, tenant.zone, after + lead, until + lead)
            except RecurrenceError as exc:
                if errors is not None:
                    errors.append(f"event {r.id}: {exc}")
                continue
        else:
            starts = [r.starts_at]
        for start in starts:
            if after < start - lead <= until:
                found.append(Occurrence(
                    event_id=r.id, title=r.title, starts_at=start,
                    ends_at=start + duration if duration is not None else None,
                    remind_minutes=remind, recurring=bool(r.rrule), organizer_id=r.organizer_id,
                ))
    return found


def calendar_reminders_due(
    session: Session, tenant: Tenant, now: datetime, window_minutes: float = DEFAULT_WINDOW_MINUTES,
    *, errors: list[str] | None = None,
) -> list[Due]:
    """One ``Due`` per (occurrence, recipient) whose reminder time is in (now - window, now]."""
    until = now.astimezone(UTC)
    found = due_occurrences(session, tenant, until - timedelta(minutes=window_minutes), until, errors=errors)
    if not found:
        return []
    event_ids = {o.event_id for o in found}
    people = sa.union(
        sa.select(CalendarEvent.id.label("event_id"), CalendarEvent.organizer_id.label("user_id"),
                  sa.literal("organizer").label("role"))
        .where(CalendarEvent.id.in_(event_ids)),
        sa.select(CalendarEventAttendee.event_id, CalendarEventAttendee.user_id, sa.literal("attendee"))
        .where(CalendarEventAttendee.event_id.in_(event_ids)),
    ).subquery()
    rows = session.execute(
        sa.select(people.c.event_id, people.c.role, User.id, User.email, User.full_name, User.timezone)
        .join(User, sa.and_(User.id == people.c.user_id, User.company_id == tenant.id, User.is_active.is_(True)))
        .order_by(people.c.event_id, User.id)
    ).all()
    by_event: dict[int, dict[int, tuple]] = defaultdict(dict)
    for r in rows:
        current = by_event[r.event_id].get(r.id)
        if current is None or r.role == "organizer":  # an organizer who also attends hears once, as organizer
            by_event[r.event_id][r.id] = r
    organizer_names = dict(session.execute(
        sa.select(User.id, User.full_name).where(User.id.in_({o.organizer_id for o in found}),
                                                 User.company_id == tenant.id)
    ).all())

    dues = []
    for occ in found:
        for person in by_event.get(occ.event_id, {}).values():
            zone = zone_of(person.timezone, tenant.zone)
            starts_local = occ.starts_at.astimezone(zone)
            ends_local = occ.ends_at.astimezone(zone) if occ.ends_at else None
            when = starts_local.strftime("%Y-%m-%d %H:%M")
            context = {
                "event_id": occ.event_id, "title": occ.title, "starts_at": occ.starts_at.isoformat(),
                "starts_local": when,
                "ends_local": (ends_local.strftime("%H:%M") if ends_local and ends_local.date() == starts_local.date()
                               else ends_local.strftime("%Y-%m-%d %H:%M") if ends_local else ""),
                "timezone": zone.key, "minutes_before": occ.remind_minutes, "recurring": occ.recurring,
                "role": person.role, "organizer_name": organizer_names.get(occ.organizer_id, ""),
                "headline": f"{occ.title} at {when}",
                "summary": f"starts in {occ.remind_minutes} minute(s)",
            }
            dues.append(Due(entity_id=occ.event_id, recipient_id=person.id, email=person.email,
                            name=person.full_name, timezone=person.timezone, context=context,
                            period=occ.starts_at.isoformat()))
    return dues


def send_calendar_reminders(
    session: Session, tenant: Tenant, now: datetime, *, mail_settings: MailSettings,
    window_minutes: float = DEFAULT_WINDOW_MINUTES, globally_off: frozenset[str] = frozenset(),
    sent_at: datetime | None = None, errors: list[str] | None = None,
) -> NoticeResult:
    """Queue the reminders of ``calendar_reminders_due`` now (send_after = ``sent_at`` or ``now``)."""
    dues = calendar_reminders_due(session, tenant, now, window_minutes, errors=errors)
    return notify_now(session, CALENDAR_NOTICE, tenant, dues, now=sent_at or now, mail_settings=mail_settings,
                      globally_off=globally_off)


def _expired_filter(tenant: Tenant, now: datetime):
    cutoff = now.astimezone(UTC) - EXPIRED_AFTER
    ev = CalendarEvent
    return (
        ev.company_id == tenant.id,
        sa.or_(ev.rrule.is_(None), ev.rrule == ""),
        sa.or_(sa.and_(ev.ends_at.is_not(None), ev.ends_at < cutoff),
               sa.and_(ev.ends_at.is_(None), ev.starts_at < cutoff)),
    )


def has_expired_events(session: Session, tenant: Tenant, now: datetime) -> bool:
    return session.execute(sa.select(CalendarEvent.id).where(*_expired_filter(tenant, now)).limit(1)).first() is not None


def cleanup_expired_events(session: Session, tenant: Tenant, now: datetime) -> int:
    """Delete the tenant's one-off events that ended over a day ago, and their attendees."""
    ids = list(session.scalars(sa.select(CalendarEvent.id).where(*_expired_filter(tenant, now))))
    for i in range(0, len(ids), DELETE_BATCH):
        batch = ids[i:i + DELETE_BATCH]
        session.execute(sa.delete(CalendarEventAttendee).where(CalendarEventAttendee.event_id.in_(batch)))
        session.execute(sa.delete(CalendarEvent).where(CalendarEvent.id.in_(batch), CalendarEvent.company_id == tenant.id))
    return len(ids)
