"""Deterministic, realistic demo data for the application tables (``bg-ops demo seed``, P5).

``seed_demo`` fills the tables of DATA_MODEL.md for a few tenants and writes the project and
approval files they point to. Everything is derived from ``seed`` and ``today``: one
``random.Random`` per tenant (seeded from ``seed`` and the tenant's position, so adding
tenants leaves the earlier ones unchanged), timestamps anchored on 12:00 UTC of ``today``,
deadlines placed on tenant-local calendar days, never the wall clock.

Re-seeding first deletes every row of the demo tenants (the companies whose slugs the demo
uses) and gives new rows explicit ids that start after the largest id of the remaining
rows, so a fresh database and a re-seeded one hold identical rows, ids included. Rows of
other companies, and bg_ops's own tables, are never touched. Files are only (re)written when
their bytes differ, so a re-seed leaves unchanged files and their mtimes alone.

The data covers every situation the daily jobs look for on ``today`` (PRODUCT R1-R13, B1-B5,
F4): overdue and stalled approvals, tasks due today / within 2 days / overdue, translations
due within 3 days, core requests not accepted, POs expiring this month, birthdays and
anniversaries this week, documents expiring in 30/7/1/0 days or unresolved after expiry,
calendar events about to start, overdue invoices and unprocessed payment events.
"""

from __future__ import annotations

import calendar
import hashlib
import os
import random
import re
import struct
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bg_ops.db.app_schema import APP_TABLES, USER_ROLES, Company, PaymentEvent
from bg_ops.db.migrate import create_app_schema

CHUNK_ROWS = 1000
_FILE_PROGRESS_EVERY = 200


class DemoTenant(NamedTuple):
    slug: str
    name: str
    timezone: str


DEMO_TENANTS: tuple[DemoTenant, ...] = (
    DemoTenant("acme", "Acme Creative", "America/New_York"),
    DemoTenant("nordlicht", "Nordlicht Agentur GmbH", "Europe/Berlin"),
    DemoTenant("sakura", "Sakura Design 株式会社", "Asia/Tokyo"),
    DemoTenant("kiwi", "Kiwi Studio", "Pacific/Auckland"),
    DemoTenant("andes", "Andes Media", "America/Santiago"),
)

# Tenants beyond the fixed five: generated names in rotating zones.
_EXTRA_ZONES = (
    ("Europe/London", "GBP"),
    ("Asia/Kolkata", "INR"),
    ("Australia/Sydney", "AUD"),
    ("America/Los_Angeles", "USD"),
    ("Africa/Johannesburg", "ZAR"),
    ("Asia/Singapore", "SGD"),
    ("America/Sao_Paulo", "BRL"),
    ("Europe/Helsinki", "EUR"),
)
_EXTRA_NAMES = (
    "Blue Harbor Studio",
    "Northwind Creative",
    "Lumen & Co.",
    "Papercut Agency",
    "Fjord Collective",
    "Marigold Media",
    "Copper Fox Design",
    "Atlas Brand Works",
)
_CURRENCY = {"acme": "USD", "nordlicht": "EUR", "sakura": "JPY", "kiwi": "NZD", "andes": "CLP"}
# Amounts are drawn in "USD-like" units and multiplied so every currency looks plausible.
_CURRENCY_FACTOR = {"JPY": 150, "CLP": 950, "INR": 85, "ZAR": 18, "BRL": 5}
_ZERO_DECIMAL = {"JPY", "CLP"}  # Stripe sends these amounts in whole units

# companies.settings and quotas of the fixed tenants (the rest get {} and no quota).
_SETTINGS = {"nordlicht": {"digest": True}, "sakura": {"reminders.birthdays": False}}
_QUOTAS = {"acme": 1024**3}


def demo_tenant(index: int) -> DemoTenant:
    """The demo tenant at ``index`` (0-based): the fixed five, then ``tenant-06`` …"""
    if index < 0:
        raise ValueError("tenant index must be >= 0")
    if index < len(DEMO_TENANTS):
        return DEMO_TENANTS[index]
    n = index + 1
    extra = index - len(DEMO_TENANTS)
    zone, _currency = _EXTRA_ZONES[extra % len(_EXTRA_ZONES)]
    base = _EXTRA_NAMES[extra % len(_EXTRA_NAMES)]
    return DemoTenant(f"tenant-{n:02d}", f"{base} {n:02d}", zone)


def demo_slugs(tenants: int) -> list[str]:
    """Slugs of the first ``tenants`` demo tenants, in seeding order."""
    return [demo_tenant(i).slug for i in range(tenants)]


def _currency(index: int, tenant: DemoTenant) -> str:
    if tenant.slug in _CURRENCY:
        return _CURRENCY[tenant.slug]
    return _EXTRA_ZONES[(index - len(DEMO_TENANTS)) % len(_EXTRA_ZONES)][1]


@dataclass
class SeedReport:
    """What ``seed_demo`` did. ``files_written`` counts every demo file now on disk (bytes in
    ``file_bytes``); ``files_unchanged`` of them already had the right bytes and were left
    alone."""

    tenants: list[str]
    rows: dict[str, int]
    rows_deleted: dict[str, int]
    files_written: int
    file_bytes: int
    files_unchanged: int = 0
    today: date | None = None
    seed: int = 0
    scale: int = 1
    created_tables: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


# --------------------------------------------------------------------------- name pools

_LATIN_FIRST = (
    ("José", "jose"), ("Zoë", "zoe"), ("Anna", "anna"), ("Liam", "liam"), ("Chloé", "chloe"),
    ("Mateo", "mateo"), ("Emma", "emma"), ("Noah", "noah"), ("Søren", "soren"),
    ("Ingrid", "ingrid"), ("François", "francois"), ("Björn", "bjorn"), ("Łukasz", "lukasz"),
    ("Ana", "ana"), ("Olivia", "olivia"), ("Ethan", "ethan"), ("Aroha", "aroha"),
    ("Tāne", "tane"), ("Camila", "camila"), ("Sebastián", "sebastian"), ("Renée", "renee"),
    ("Jürgen", "juergen"), ("Marta", "marta"), ("Kai", "kai"), ("Valentina", "valentina"),
    ("Oliver", "oliver"), ("Léa", "lea"), ("Matías", "matias"), ("Hannah", "hannah"),
    ("Mia", "mia"), ("Siobhán", "siobhan"), ("Dariusz", "dariusz"),
)
_LATIN_LAST = (
    ("Müller", "mueller"), ("Ångström", "angstrom"), ("García", "garcia"), ("O'Brien", "obrien"),
    ("Smith", "smith"), ("Nguyễn", "nguyen"), ("Kowalski", "kowalski"), ("Dubois", "dubois"),
    ("Schäfer", "schaefer"), ("Rossi", "rossi"), ("Ngata", "ngata"), ("Fernández", "fernandez"),
    ("Johansson", "johansson"), ("Silva", "silva"), ("Wright", "wright"), ("Brown", "brown"),
    ("Fischer", "fischer"), ("Weiß", "weiss"), ("Henare", "henare"), ("Muñoz", "munoz"),
    ("Rojas", "rojas"), ("Petit", "petit"), ("Novák", "novak"), ("Jensen", "jensen"),
    ("Walsh", "walsh"), ("Costa", "costa"), ("van der Berg", "vanderberg"), ("Øster", "oster"),
)
_JA_GIVEN = (("花子", "hanako"), ("健太", "kenta"), ("陽菜", "hina"), ("翔", "sho"),
             ("美咲", "misaki"), ("大輝", "daiki"), ("結衣", "yui"), ("蓮", "ren"))
_JA_FAMILY = (("佐藤", "sato"), ("鈴木", "suzuki"), ("高橋", "takahashi"), ("田中", "tanaka"),
              ("渡辺", "watanabe"), ("伊藤", "ito"), ("山本", "yamamoto"), ("中村", "nakamura"))
_ZH_GIVEN = (("小龍", "xiaolong"), ("伟", "wei"), ("芳", "fang"), ("静", "jing"), ("磊", "lei"),
             ("秀英", "xiuying"))
_ZH_FAMILY = (("李", "li"), ("王", "wang"), ("张", "zhang"), ("刘", "liu"), ("陈", "chen"))
# (given, family stem, feminine?) so Russian surnames agree with the given name.
_RU_GIVEN = (("Ольга", "olga", True), ("Иван", "ivan", False), ("Анна", "anna", True),
             ("Дмитрий", "dmitry", False), ("Мария", "maria", True), ("Сергей", "sergey", False))
_RU_FAMILY = (("Петров", "petrov"), ("Смирнов", "smirnov"), ("Соколов", "sokolov"),
              ("Волков", "volkov"), ("Кузнецов", "kuznetsov"))

# Culture weights per tenant: (latin, ja, zh, ru).
_CULTURES = ("latin", "ja", "zh", "ru")
_CULTURE_WEIGHTS = {
    "acme": (8, 1, 2, 1),
    "nordlicht": (9, 0, 1, 2),
    "sakura": (2, 8, 2, 0),
    "kiwi": (9, 1, 2, 0),
    "andes": (10, 1, 0, 1),
}
_DEFAULT_CULTURE_WEIGHTS = (7, 1, 1, 1)
# Names the first tenant always has (accented and non-Latin scripts in one place).
_SPECIAL_NAMES = (
    ("José Müller", "jose.mueller"),
    ("Zoë Ångström", "zoe.angstrom"),
    ("李小龍", "li.xiaolong"),
    ("Ольга Петрова", "olga.petrova"),
)

# The first ten users of every tenant cover every role, admin first so it can manage.
_CORE_ROLES = ("admin", "pm", "finance", "hr", "account_manager", "approver", "designer",
               "translator", "employee", "client")
_EXTRA_ROLES = ("employee", "designer", "pm", "translator", "client", "account_manager",
                "approver", "finance", "hr", "admin")
_EXTRA_WEIGHTS = (30, 24, 10, 10, 10, 5, 4, 3, 2, 2)
_STAFF_ZONES = ("Europe/Lisbon", "America/Chicago", "Asia/Manila", "Europe/Warsaw",
                "America/Bogota", "Australia/Brisbane")

_PROJECT_NAMES = (
    "Brand Refresh", "Spring Campaign", "Website Relaunch", "Annual Report",
    "Product Launch Video", "Packaging Redesign", "Trade Show Booth", "Social Media Kit",
    "Localization Wave", "Newsletter Templates", "Product Catalogue", "Employer Branding",
    "Kampagne Frühling", "Catálogo Otoño", "Store Signage", "Podcast Artwork",
    "Investor Deck", "Mobile App Icons", "Event Microsite", "Sustainability Report",
)
_CLIENTS = (
    "Globex Corporation", "Initech", "Umbrella Foods", "Stark Outdoor", "Wayne Logistics",
    "Müller & Söhne KG", "Hooli", "Vandelay Industries", "Cyberdyne Systems", "Tyrell Optics",
    "Pied Piper", "Oceanic Airlines", "Café Ñandú", "Soylent Co.",
)
_TASK_TITLES = (
    "Draft headline options", "Retouch hero image", "Prepare print-ready files",
    "Write client call notes", "Update style guide", "Export social assets",
    "Proofread brochure copy", "Review German translation", "Book photographer",
    "Color-correct product shots", "Build landing page wireframe", "Check trademark usage",
    "Collect client feedback", "Prepare invoice backup", "Storyboard v2",
    "Überarbeitung Logo", "キービジュアル修正", "Revisar textos del catálogo",
    "Resize banners for display ads", "Archive final deliverables", "Send proofs to printer",
    "Prepare moodboard", "Record voice-over", "Fix kerning on cover",
)
_DELIVERABLES = (
    "Key visual", "Brochure layout", "Packaging mockup", "Homepage design", "Logo variants",
    "Print ad", "Video storyboard", "Social carousel", "Poster series", "Email template",
)
_APPROVE_COMMENTS = (
    "Looks great ✓ – ship it", "Approved, thanks!", "Freigegeben 👍", "承認します。",
    "Aprobado — buen trabajo", "OK from legal ✔", None, None,
)
_REJECT_COMMENTS = (
    "Rejected: logo too small – please enlarge by 20 %",
    "Farbe passt nicht zur CI (Pantone 186 C ≠ 185 C)",
    "見出しのフォントを変更してください",
    "Texto con errores — revisar «titular»",
)
_LANGUAGES = ("de", "ja", "es", "fr", "pt-BR", "zh-Hans", "it", "ko")
_CORE_TITLES = (
    "New trade fair brochure", "Landing page for product launch", "Rebrand of the newsletter",
    "Photo shoot for autumn collection", "Explainer video (60 s)", "Packaging for limited edition",
    "Social campaign Q{q}", "Annual report layout", "Signage for new store",
)
_DESIGN_TITLES = (
    "Banner set 300×250 / 728×90", "Icon refresh", "Infographic: market data",
    "Business cards for new hires", "Event badge design", "Slide template update",
    "Menu card redesign", "Sticker sheet",
)
_DOCUMENTS = (
    ("insurance", "Professional liability insurance"),
    ("insurance", "Equipment insurance policy"),
    ("certification", "ISO 9001 certificate"),
    ("certification", "Adobe Certified Professional"),
    ("contract", "Freelancer framework contract"),
    ("contract", "Office lease"),
    ("other", "Work permit"),
    ("other", "Font license (Neue Haas)"),
)


# --------------------------------------------------------------------------- helpers


def _slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug or "project"


def _years_before(day: date, years: int, *, exact: bool = False) -> date:
    """``day`` ``years`` earlier; Feb 29 falls back to Feb 28, or with ``exact`` goes further
    back to a leap year so the anniversary really is on ``day``."""
    if day.month == 2 and day.day == 29:
        if exact:
            while not calendar.isleap(day.year - years):
                years += 1
        else:
            try:
                return day.replace(year=day.year - years)
            except ValueError:
                return date(day.year - years, 2, 28)
    return day.replace(year=day.year - years)


def _end_of_month(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _add_months(day: date, months: int) -> date:
    m = day.month - 1 + months
    year, month = day.year + m // 12, m % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _pdf(lines: Sequence[str], *, title: str) -> bytes:
    """A minimal valid one-page PDF 1.4 (Helvetica, WinAnsi) with correct xref offsets."""

    def esc(text: str) -> str:
        text = text.encode("cp1252", "replace").decode("cp1252")
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 20 Tf", "72 760 Td", f"({esc(lines[0])}) Tj", "/F1 11 Tf"]
    for line in lines[1:]:
        ops += ["0 -22 Td", f"({esc(line)}) Tj"]
    ops.append("ET")
    stream = "\n".join(ops).encode("cp1252")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Title (" + esc(title).encode("cp1252") + b") /Producer (bg_ops demo) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (len(objects) + 1, len(objects))
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(rgb: tuple[int, int, int], width: int = 64, height: int = 48) -> bytes:
    """A ``width``×``height`` RGB gradient PNG in ``rgb`` (8-bit, no external library)."""
    r, g, b = rgb
    reds = bytes((r * (24 + x)) // (23 + width) for x in range(width))
    blue = bytes([b]) * width
    raw = bytearray()
    for y in range(height):
        row = bytearray(width * 3)
        row[0::3] = reds
        row[1::3] = bytes([(g * (16 + y) + 255 * (height - y)) // (16 + 2 * height)]) * width
        row[2::3] = blue
        raw += b"\x00" + row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + _png_chunk(b"IEND", b"")
    )


def _color_for(path: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(path.encode()).digest()
    return digest[0] | 0x40, digest[1] | 0x20, digest[2]


def _money(rng: random.Random, low: int, high: int, currency: str) -> Decimal:
    factor = _CURRENCY_FACTOR.get(currency, 1)
    cents = rng.randrange(low * 100, high * 100) * factor
    if currency in _ZERO_DECIMAL:
        cents -= cents % 100
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


# --------------------------------------------------------------------------- building rows


class _Plan:
    """Rows per table (with explicit ids) and files, for all demo tenants."""

    def __init__(self, today: date, scale: int, bases: dict[str, int]) -> None:
        self.today = today
        self.ref = datetime.combine(today, time(12, 0), tzinfo=UTC)
        self.scale = scale
        self._last_id = dict(bases)
        self.rows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in APP_TABLES}
        self.files: dict[str, bytes] = {}

    def add(self, table: str, **row: Any) -> dict[str, Any]:
        self._last_id[table] += 1
        row = {"id": self._last_id[table], **row}
        self.rows[table].append(row)
        return row


class _TenantBuilder:
    def __init__(self, plan: _Plan, index: int, tenant: DemoTenant, seed: int) -> None:
        self.plan = plan
        self.index = index
        self.tenant = tenant
        self.slug = tenant.slug
        self.rng = random.Random(f"bg_ops.demo:{seed}:{index}")
        self.zone = ZoneInfo(tenant.timezone)
        self.today = plan.today
        self.ref = plan.ref
        self.scale = plan.scale
        self.currency = _currency(index, tenant)
        self.company_id = 0
        self.users: list[dict[str, Any]] = []
        self.projects: list[dict[str, Any]] = []
        self.invoices: list[dict[str, Any]] = []
        self._event_seq = 0

    # time helpers: deadlines on tenant-local days, events relative to the reference instant
    def local(self, days: int, hour: int, minute: int = 0) -> datetime:
        day = self.today + timedelta(days=days)
        return datetime.combine(day, time(hour, minute), tzinfo=self.zone).astimezone(UTC)

    def ago(self, days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
        return self.ref - timedelta(days=days, hours=hours, minutes=minutes)

    def due_hour(self) -> tuple[int, int]:
        return self.rng.choice((9, 12, 15, 17, 17, 18)), self.rng.choice((0, 0, 30))

    def add(self, table: str, **row: Any) -> dict[str, Any]:
        return self.plan.add(table, **row)

    def active(self, *roles: str) -> list[dict[str, Any]]:
        return [u for u in self.users if u["is_active"] and u["role"] in roles]

    def staff(self) -> list[dict[str, Any]]:
        return [u for u in self.users if u["is_active"] and u["role"] not in ("client",)]

    def build(self) -> None:
        self.build_company()
        self.build_users()
        self.build_pto_tiers()
        self.build_projects()
        self.build_task_templates()
        self.build_tasks()
        self.build_approvals()
        self.build_translations()
        self.build_core_requests()
        self.build_design_queue()
        self.build_purchase_orders()
        self.build_invoices()
        self.build_payment_events()
        self.build_estimates()
        self.build_documents()
        self.build_calendar()

    # ---------------------------------------------------------------- tenant and people
    def build_company(self) -> None:
        row = self.add(
            "companies",
            name=self.tenant.name,
            slug=self.slug,
            timezone=self.tenant.timezone,
            is_active=True,
            storage_quota_bytes=_QUOTAS.get(self.slug),
            settings=dict(_SETTINGS.get(self.slug, {})),
        )
        self.company_id = row["id"]

    def _person(self, culture: str) -> tuple[str, str]:
        rng = self.rng
        if culture == "ja":
            (gn, ga), (fn, fa) = rng.choice(_JA_GIVEN), rng.choice(_JA_FAMILY)
            return fn + gn, f"{ga}.{fa}"
        if culture == "zh":
            (gn, ga), (fn, fa) = rng.choice(_ZH_GIVEN), rng.choice(_ZH_FAMILY)
            return fn + gn, f"{fa}.{ga}"
        if culture == "ru":
            (gn, ga, fem), (fn, fa) = rng.choice(_RU_GIVEN), rng.choice(_RU_FAMILY)
            return f"{gn} {fn}{'а' if fem else ''}", f"{ga}.{fa}{'a' if fem else ''}"
        (gn, ga), (fn, fa) = rng.choice(_LATIN_FIRST), rng.choice(_LATIN_LAST)
        return f"{gn} {fn}", f"{ga}.{fa}"

    def _birth_date(self, min_age: int = 22) -> date:
        age = self.rng.randint(min_age, 63)
        return date(self.today.year - age, 1, 1) + timedelta(days=self.rng.randrange(365))

    def build_users(self) -> None:
        rng, today = self.rng, self.today
        count = 15 + 10 * self.scale
        roles = list(_CORE_ROLES) + rng.choices(_EXTRA_ROLES, _EXTRA_WEIGHTS, k=count - 10)
        # Two leavers right after the core users: inactive, one with a birthday today.
        roles[10], roles[11] = "employee", "designer"
        weights = _CULTURE_WEIGHTS.get(self.slug, _DEFAULT_CULTURE_WEIGHTS)
        used: dict[str, int] = {}
        by_role: dict[str, list[dict[str, Any]]] = {r: [] for r in USER_ROLES}
        for i, role in enumerate(roles):
            if self.index == 0 and 1 <= i <= len(_SPECIAL_NAMES):
                full_name, local = _SPECIAL_NAMES[i - 1]
            else:
                full_name, local = self._person(rng.choices(_CULTURES, weights)[0])
            n = used.get(local, 0) + 1
            used[local] = n
            if n > 1:
                local = f"{local}{n}"
            domain = f"clients.{self.slug}.example" if role == "client" else f"{self.slug}.example"
            is_active = True
            if i in (10, 11):
                is_active = False
            elif i > 11 and role in ("employee", "designer", "translator"):
                is_active = rng.random() >= 0.04
            manager_id = None
            if role in ("pm", "finance", "hr", "account_manager", "approver") or (
                role == "admin" and i > 0
            ):
                manager_id = self.users[0]["id"] if self.users else None
            elif role in ("designer", "translator", "employee"):
                leads = [u for u in by_role["pm"] + by_role["approver"] if u["is_active"]]
                if role == "employee":
                    leads += [u for u in by_role["hr"] + by_role["finance"] if u["is_active"]]
                manager_id = rng.choice(leads)["id"] if leads else None
            if role == "client":
                zone = rng.choice((None, None, *_STAFF_ZONES))
                birth, hire = None, None
            else:
                zone = rng.choice(_STAFF_ZONES) if rng.random() < 0.2 else None
                birth = self._birth_date(38 if i == 0 else 22)
                # up to 12 years of service, never hired before turning 20
                years = min(12, today.year - birth.year - 20)
                hire = today - timedelta(days=rng.randrange(0, years * 365))
                if i == 0:
                    hire = _years_before(today, 12) - timedelta(days=rng.randrange(20, 200))
            user = self.add(
                "users",
                company_id=self.company_id,
                email=f"{local}@{domain}",
                full_name=full_name,
                role=role,
                is_active=is_active,
                timezone=zone,
                manager_id=manager_id,
                birth_date=birth,
                hire_date=hire,
            )
            self.users.append(user)
            by_role[role].append(user)

        # Birthdays and work anniversaries today and this week (R10, B4), in local dates.
        self.users[10]["birth_date"] = _years_before(today, 31, exact=True)
        candidates = [u for u in self.users[1:] if u["is_active"] and u["role"] != "client"]
        picks = rng.sample(candidates, 5)
        for user, offset in zip(picks[:3], (0, rng.randint(1, 3), rng.randint(4, 6)), strict=True):
            day = today + timedelta(days=offset)
            user["birth_date"] = _years_before(day, day.year - user["birth_date"].year, exact=True)
        picks[3]["hire_date"] = _years_before(today, 3, exact=True)
        picks[4]["hire_date"] = today - timedelta(days=10)
        taken = {u["id"] for u in picks}
        seniors = [
            u for u in candidates if u["id"] not in taken and today.year - u["birth_date"].year >= 30
        ]
        if seniors:  # seven years of service this week: the next PTO tier (B4)
            senior = rng.choice(seniors)
            senior["hire_date"] = _years_before(
                today + timedelta(days=rng.randint(2, 5)), 7, exact=True
            )

    def build_pto_tiers(self) -> None:
        for name, years, hours in (
            ("Starter", 0, "8.00"),
            ("Experienced", 3, "10.00"),
            ("Senior", 7, "13.33"),
        ):
            self.add(
                "pto_tiers",
                company_id=self.company_id,
                name=f"{name} ({years}+ years)",
                min_service_years=years,
                hours_per_month=Decimal(hours),
            )

    # ---------------------------------------------------------------- projects and files
    def build_projects(self) -> None:
        rng = self.rng
        pms = self.active("pm")
        seq = 0
        for _block in range(self.scale):
            statuses = ["active", "active", "active", "active", "on_hold", "billable",
                        "invoiced", "closed"]
            rng.shuffle(statuses)
            for name, status in zip(rng.sample(_PROJECT_NAMES, 8), statuses, strict=True):
                seq += 1
                billable_at = {
                    "billable": self.ago(hours=rng.randint(1, 6)),
                    "invoiced": self.ago(days=rng.randint(10, 30)),
                    "closed": self.ago(days=rng.randint(40, 90)),
                }.get(status)
                pm = rng.choice(pms)
                client = rng.choice(_CLIENTS)
                files_path = f"p{seq:04d}-{_slugify(name)}"
                project = self.add(
                    "projects",
                    company_id=self.company_id,
                    name=name,
                    client_name=client,
                    pm_id=pm["id"],
                    status=status,
                    billable_at=billable_at,
                    files_path=files_path,
                )
                self.projects.append(project)
                self._project_files(project, pm)

    def _project_files(self, project: dict[str, Any], pm: dict[str, Any]) -> None:
        folder = f"{self.slug}/projects/{project['files_path']}"
        brief = (
            f"Project brief — {project['name']}\n"
            f"Agency: {self.tenant.name}\n"
            f"Client: {project['client_name']}\n"
            f"Project manager: {pm['full_name']} <{pm['email']}>\n"
            f"Status: {project['status']}\n"
            f"Prepared: {self.today.isoformat()}\n\n"
            "Goals: a consistent look across print and digital, delivered on time.\n"
        )
        self.plan.files[f"{folder}/brief.txt"] = brief.encode("utf-8")
        extras = ("proposal-v1.pdf", "assets/moodboard.png", "assets/logo-draft.png", "contract.pdf")
        for name in self.rng.sample(extras, self.rng.randint(1, 3)):
            path = f"{folder}/{name}"
            if name.endswith(".pdf"):
                title = f"{project['name']} - {name.removesuffix('.pdf')}"
                self.plan.files[path] = _pdf(
                    [title, f"{self.tenant.name} for {project['client_name']}",
                     f"Project {project['files_path']}"],
                    title=title,
                )
            else:
                self.plan.files[path] = _png(_color_for(path))

    # ---------------------------------------------------------------- tasks
    def build_task_templates(self) -> None:
        rng = self.rng
        today = self.today
        monday = today - timedelta(days=today.weekday())
        for _block in range(self.scale):
            project = rng.choice(self.projects)
            for title, rule, start, active in (
                ("Weekly status report", "FREQ=WEEKLY;BYDAY=MO",
                 monday - timedelta(weeks=rng.randint(3, 12)), True),
                ("Monthly timesheet review", "FREQ=MONTHLY;BYMONTHDAY=1",
                 _add_months(today.replace(day=1), -rng.randint(2, 6)), True),
                ("Friday backup check", "FREQ=WEEKLY;BYDAY=FR",
                 monday - timedelta(weeks=rng.randint(2, 8), days=3), True),
                ("Quarterly portfolio update", "FREQ=MONTHLY;INTERVAL=3;BYMONTHDAY=15",
                 _add_months(today.replace(day=15), -rng.randint(4, 9)), False),
            ):
                start_at = datetime.combine(start, time(9, 0), tzinfo=self.zone).astimezone(UTC)
                self.add(
                    "task_templates",
                    company_id=self.company_id,
                    project_id=project["id"] if rule.startswith("FREQ=WEEKLY;BYDAY=MO") else None,
                    title=title,
                    rrule=rule,
                    dtstart=start_at,
                    assignee_id=rng.choice(self.staff())["id"],
                    is_active=active,
                )

    def build_tasks(self) -> None:
        rng = self.rng
        spec: list[tuple[str, int | None]] = (
            [("open", -1), ("open", -3), ("open", -7), ("in_progress", -2), ("open", -15)]
            + [("open", 0), ("open", 0), ("in_progress", 0), ("in_progress", 0)]
            + [("open", 1), ("open", 1), ("in_progress", 1), ("in_progress", 2), ("open", 2)]
            + [("open", d) for d in (3, 4, 5, 6, 8, 10, 12, 14)]
            + [("open", d) for d in (30, 45, 60, 75, 90, 120)]
            + [("open", None), ("in_progress", None)]
            + [("done", d) for d in (-1, -2, -5, -9, -14, -21, 0)]
            + [("canceled", d) for d in (-4, 6, None)]
        )
        workers = [u for u in self.staff() if u["role"] not in ("admin", "finance", "hr")]
        leavers = [u for u in self.users if not u["is_active"]]
        projects = [p for p in self.projects if p["status"] in ("active", "on_hold", "billable")]
        for _block in range(self.scale):
            for n, (status, offset) in enumerate(spec):
                due = None
                if offset is not None:
                    offset += rng.choice((0, 0, 0, 1)) if abs(offset) >= 3 else 0
                    due = self.local(offset, *self.due_hour())
                assignee = rng.choice(workers)
                if n == 4 and leavers:  # an overdue task left with someone who has gone
                    assignee = rng.choice(leavers)
                elif rng.random() < 0.05:
                    assignee = None
                self.add(
                    "tasks",
                    company_id=self.company_id,
                    project_id=rng.choice(projects)["id"] if rng.random() < 0.9 else None,
                    title=rng.choice(_TASK_TITLES),
                    assignee_id=assignee["id"] if assignee else None,
                    due_at=due,
                    status=status,
                    template_id=None,
                    occurrence_at=None,
                    kind="work",
                )

    # ---------------------------------------------------------------- approvals
    def build_approvals(self) -> None:
        # (status, days since created, approval due as local day offset, decisions so far
        # as (step status, days ago), whether the next stage is pending)
        d = timedelta
        scenarios: list[tuple[str, float, int | None, list[tuple[str, float]]]] = [
            ("in_review", 12, -1, [("approved", 2.0)]),  # overdue
            ("in_review", 10, -5, []),  # overdue, stage 1 pending for 10 days
            ("in_review", 6, 4, []),  # stalled at stage 1
            ("in_review", 9, 3, [("approved", 5.0)]),  # stalled at stage 2
            ("in_review", 1, 4, []),  # fresh
            ("in_review", 3, 6, [("approved", 0.5)]),  # fresh at stage 2
            ("completed", 10, 2, [("approved", 4.0), ("approved", 0.125)]),
            ("completed", 7, -1, [("approved", 3.0), ("approved", 1.0)]),
            ("completed", 40, -25, [("approved", 35.0), ("approved", 30.0)]),
            ("rejected", 5, 3, [("approved", 3.0), ("rejected", 0.25)]),
            ("draft", 1, 10, []),
            ("canceled", 20, -5, [("approved", 18.0)]),
        ]
        rng = self.rng
        first = self.active("approver", "pm")
        clients = self.active("client")
        finals = self.active("account_manager", "admin")
        projects = [p for p in self.projects if p["status"] != "closed"] or self.projects
        for _block in range(self.scale):
            for status, age, due_offset, decisions in scenarios:
                project = rng.choice(projects)
                if status == "completed":
                    stages = len(decisions)
                else:
                    # in review: the pending stage follows the decisions; rejected: a later
                    # stage is skipped
                    needed = len(decisions) + (1 if status in ("in_review", "rejected") else 0)
                    stages = max(rng.choice((2, 3)), needed)
                created = self.ago(days=age, hours=rng.randint(0, 5))
                steps: list[dict[str, Any]] = []
                start = created
                for stage in range(1, stages + 1):
                    approver = rng.choice((first, clients, finals)[min(stage, 3) - 1])
                    step = {"stage": stage, "approver_id": approver["id"], "status": "pending",
                            "due_at": None, "responded_at": None, "comment": None}
                    if stage <= len(decisions):
                        decision, days_ago = decisions[stage - 1]
                        responded = self.ago(days=days_ago)
                        step.update(status=decision, due_at=start + d(days=2),
                                    responded_at=responded,
                                    comment=rng.choice(_REJECT_COMMENTS if decision == "rejected"
                                                       else _APPROVE_COMMENTS))
                        start = responded
                    elif status == "in_review" and stage == len(decisions) + 1:
                        step["due_at"] = start + d(days=2)
                    elif status in ("rejected", "canceled"):
                        step["status"] = "skipped"
                    steps.append(step)
                last_change = max([created] + [s["responded_at"] for s in steps if s["responded_at"]])
                if status == "canceled":
                    last_change = self.ago(days=15)
                pending = [s["stage"] for s in steps if s["status"] == "pending"]
                decided = [s["stage"] for s in steps if s["status"] in ("approved", "rejected")]
                current = pending[0] if pending and status == "in_review" else (
                    max(decided) if decided else 1)
                approval = self.add(
                    "approvals",
                    company_id=self.company_id,
                    project_id=project["id"],
                    title=f"{project['name']} – {rng.choice(_DELIVERABLES)} v{rng.randint(1, 4)}",
                    status=status,
                    due_at=self.local(due_offset, 17) if due_offset is not None else None,
                    current_stage=current,
                    created_at=created,
                    updated_at=last_change,
                    completed_at=last_change if status == "completed" else None,
                )
                for step in steps:
                    self.add("approval_steps", approval_id=approval["id"], **step)
                self._approval_files(approval, created)

    def _approval_files(self, approval: dict[str, Any], created: datetime) -> None:
        folder = f"{self.slug}/approvals/a{approval['id']}"
        names = ["proof-v1.pdf"] + (["mockup-v2.png"] if self.rng.random() < 0.5 else [])
        for k, name in enumerate(names):
            path = f"{folder}/{name}"
            if name.endswith(".pdf"):
                self.plan.files[path] = _pdf(
                    [approval["title"], f"Proof for approval #{approval['id']}", self.tenant.name],
                    title=approval["title"],
                )
            else:
                self.plan.files[path] = _png(_color_for(path))
            self.add("approval_files", approval_id=approval["id"], path=path,
                     uploaded_at=min(created + timedelta(hours=1 + 20 * k), self.ref))

    # ---------------------------------------------------------------- other work items
    def build_translations(self) -> None:
        rng = self.rng
        translators = self.active("translator")
        spec = [("open", 1), ("open", 2), ("open", 3), ("open", -2), ("open", -6),
                ("delivered", -4), ("delivered", 2), ("canceled", 5)]
        for _block in range(self.scale):
            for status, offset in spec:
                assignee = rng.choice(translators) if rng.random() < 0.75 else None
                self.add(
                    "translations",
                    company_id=self.company_id,
                    project_id=rng.choice(self.projects)["id"],
                    language=rng.choice(_LANGUAGES),
                    assignee_id=assignee["id"] if assignee else None,
                    due_at=self.local(offset, *self.due_hour()),
                    status=status,
                )

    def build_core_requests(self) -> None:
        rng = self.rng
        ams = self.active("account_manager")
        # (status, submitted days ago, accepted days ago, updated days ago)
        spec = [("submitted", 9, None, 9), ("submitted", 4, None, 4), ("submitted", 1, None, 1),
                ("accepted", 6, 5, 5), ("ready_for_approval", 10, 8, 1),
                ("ready_for_approval", 5, 4, 0.25), ("approved", 14, 12, 2),
                ("rejected", 12, 10, 3)]
        for _block in range(self.scale):
            for status, submitted, accepted, updated in spec:
                hours = rng.randint(0, 6)
                am = rng.choice(ams) if rng.random() < 0.85 else None
                self.add(
                    "core_requests",
                    company_id=self.company_id,
                    project_id=rng.choice(self.projects)["id"] if rng.random() < 0.7 else None,
                    title=rng.choice(_CORE_TITLES).format(q=(self.today.month - 1) // 3 + 1),
                    status=status,
                    account_manager_id=am["id"] if am else None,
                    submitted_at=self.ago(days=submitted, hours=hours),
                    accepted_at=self.ago(days=accepted, hours=hours) if accepted is not None else None,
                    updated_at=self.ago(days=updated, hours=hours if updated >= 1 else 0),
                )

    def build_design_queue(self) -> None:
        rng = self.rng
        spec = [("queued", 1 / 24), ("queued", 2), ("queued", 6), ("in_progress", 3),
                ("in_progress", 1), ("done", 8)]
        for _block in range(self.scale):
            for status, days in spec:
                self.add(
                    "design_queue_items",
                    company_id=self.company_id,
                    project_id=rng.choice(self.projects)["id"],
                    title=rng.choice(_DESIGN_TITLES),
                    status=status,
                    queued_at=self.ago(days=days, minutes=rng.randint(0, 50)),
                )

    def build_purchase_orders(self) -> None:
        rng, today = self.rng, self.today
        eom = _end_of_month(today)
        next_month = _add_months(today.replace(day=1), 1)
        seq = 0
        for _block in range(self.scale):
            spec = [
                ("open", today + timedelta(days=rng.randint(0, (eom - today).days))),
                ("open", next_month.replace(day=rng.randint(1, _end_of_month(next_month).day))),
                ("open", _add_months(today, rng.randint(3, 6))),
                ("expired", today - timedelta(days=rng.randint(20, 60))),
                ("closed", today - timedelta(days=rng.randint(10, 100))),
            ]
            for status, expires in spec:
                seq += 1
                self.add(
                    "purchase_orders",
                    company_id=self.company_id,
                    project_id=rng.choice(self.projects)["id"],
                    number=f"PO-{today.year}-{seq:04d}",
                    amount=_money(rng, 2_000, 60_000, self.currency),
                    currency=self.currency,
                    expires_on=expires,
                    status=status,
                )

    def build_invoices(self) -> None:
        rng, today = self.rng, self.today
        billed = [p for p in self.projects if p["status"] in ("billable", "invoiced", "closed")]
        billed = billed or self.projects
        # (status, issued days ago, due in days, paid days ago)
        spec = [("sent", 40, -10, None), ("sent", 65, -35, None), ("sent", 5, 25, None),
                ("sent", 2, 28, None), ("paid", 30, 0, 12), ("paid", 50, -20, 2),
                ("draft", None, None, None), ("void", 20, 10, None)]
        seq = 0
        for _block in range(self.scale):
            for status, issued, due, paid in spec:
                seq += 1
                issued_on = today - timedelta(days=issued) if issued is not None else None
                paid_at = self.ago(days=paid, hours=rng.randint(0, 8)) if paid is not None else None
                invoice = self.add(
                    "invoices",
                    company_id=self.company_id,
                    project_id=rng.choice(billed)["id"],
                    number=f"INV-{today.year}-{seq:04d}",
                    amount=_money(rng, 800, 40_000, self.currency),
                    currency=self.currency,
                    issued_on=issued_on,
                    due_on=today + timedelta(days=due) if due is not None else None,
                    status=status,
                    paid_at=paid_at,
                    updated_at=paid_at or self.ago(days=issued if issued is not None else 1),
                )
                self.invoices.append(invoice)

    def build_payment_events(self) -> None:
        # Processed events for the paid invoices; one unprocessed event for a sent invoice
        # that is not yet due (the payment sensor marks it paid).
        for k in range(0, len(self.invoices), 8):
            block = self.invoices[k:k + 8]
            for invoice in (block[4], block[5], block[3]):
                received = invoice["paid_at"] or self.ago(minutes=self.rng.randint(5, 55))
                self._event_seq += 1
                event_id = f"evt_{self.slug}_{self._event_seq:04d}"
                currency = invoice["currency"]
                minor = invoice["amount"] if currency in _ZERO_DECIMAL else invoice["amount"] * 100
                payload = {
                    "id": event_id,
                    "object": "event",
                    "type": "invoice.paid",
                    "created": int(received.timestamp()),
                    "livemode": False,
                    "data": {
                        "object": {
                            "object": "invoice",
                            "number": invoice["number"],
                            "amount_paid": int(minor),
                            "currency": currency.lower(),
                            "metadata": {"tenant": self.slug, "invoice_number": invoice["number"]},
                        }
                    },
                }
                self.add(
                    "payment_events",
                    provider="stripe",
                    event_id=event_id,
                    received_at=received,
                    payload=payload,
                    signature_valid=True,
                    processed_at=received + timedelta(seconds=4) if invoice["paid_at"] else None,
                    error=None,
                )

    def build_estimates(self) -> None:
        rng, today = self.rng, self.today
        spec = [("draft", 1), ("sent", 3), ("sent", 20), ("accepted", 10), ("declined", 15)]
        seq = 0
        for _block in range(self.scale):
            for status, days in spec:
                seq += 1
                self.add(
                    "estimates",
                    company_id=self.company_id,
                    project_id=rng.choice(self.projects)["id"],
                    number=f"EST-{today.year}-{seq:04d}",
                    amount=_money(rng, 1_000, 50_000, self.currency),
                    currency=self.currency,
                    status=status,
                    updated_at=self.ago(days=days, hours=rng.randint(0, 8)),
                )

    def build_documents(self) -> None:
        rng, today = self.rng, self.today
        owners = [u for u in self.staff() if u["manager_id"] is not None]
        spec = [("valid", 30), ("valid", 7), ("valid", 1), ("valid", 0), ("valid", -3),
                ("renewed", -10), ("valid", 400), ("expired", -60)]
        for _block in range(self.scale):
            for status, offset in spec:
                kind, title = rng.choice(_DOCUMENTS)
                owner = rng.choice(owners)
                self.add(
                    "documents",
                    company_id=self.company_id,
                    owner_id=owner["id"],
                    title=f"{title} — {owner['full_name']}" if kind != "insurance" else title,
                    kind=kind,
                    expires_on=today + timedelta(days=offset),
                    status=status,
                )

    def build_calendar(self) -> None:
        rng, today = self.rng, self.today
        organizers = self.active("pm", "admin")
        staff = self.staff()
        monday = today - timedelta(days=today.weekday())
        for _block in range(self.scale):
            spec = [
                ("Client review call", self.ref + timedelta(hours=3), 60, None, 30),
                ("Design critique", self.ref + timedelta(minutes=25), 45, None, 30),
                ("Sprint planning", self.local(1, 10), 90, None, 15),
                ("Weekly team stand-up",
                 datetime.combine(monday - timedelta(weeks=8), time(9, 30), tzinfo=self.zone)
                 .astimezone(UTC), 15, "FREQ=WEEKLY;BYDAY=MO", 10),
                ("Photo shoot (studio B)", self.local(-3, 14), 180, None, 60),
            ]
            for title, starts, minutes, rule, remind in spec:
                organizer = rng.choice(organizers)
                event = self.add(
                    "calendar_events",
                    company_id=self.company_id,
                    title=title,
                    starts_at=starts,
                    ends_at=starts + timedelta(minutes=minutes),
                    rrule=rule,
                    remind_minutes_before=remind,
                    organizer_id=organizer["id"],
                )
                others = [u for u in staff if u["id"] != organizer["id"]]
                for attendee in rng.sample(others, min(len(others), rng.randint(2, 5))):
                    self.add("calendar_event_attendees", event_id=event["id"],
                             user_id=attendee["id"])


# --------------------------------------------------------------------------- database


def _delete_demo_rows(conn: sa.Connection, slugs: list[str]) -> dict[str, int]:
    """Delete every row of the demo tenants, children first; return counts per table."""
    companies = Company.__table__
    company_ids = sa.select(companies.c.id).where(companies.c.slug.in_(slugs)).scalar_subquery()
    tenant_tables = {t.name for t in APP_TABLES if "company_id" in t.c}
    deleted: dict[str, int] = {}
    for table in reversed(APP_TABLES):
        if table is companies:
            condition = companies.c.id.in_(company_ids)
        elif "company_id" in table.c:
            condition = table.c.company_id.in_(company_ids)
        elif table is PaymentEvent.__table__:
            condition = sa.or_(
                *[table.c.event_id.startswith(f"evt_{slug}_", autoescape=True) for slug in slugs]
            )
        else:
            # approval_steps, approval_files, calendar_event_attendees: every row that
            # points at a demo tenant's row (its approval or event, or a demo user). The
            # parents still exist here because children are deleted first.
            fks = sorted(
                (fk for fk in table.foreign_keys if fk.column.table.name in tenant_tables),
                key=lambda fk: fk.parent.name,
            )
            if not fks:
                raise RuntimeError(f"demo seed does not know how table {table.name} maps to tenants")
            condition = sa.or_(
                *[
                    fk.parent.in_(
                        sa.select(fk.column.table.c.id).where(
                            fk.column.table.c.company_id.in_(company_ids)
                        )
                    )
                    for fk in fks
                ]
            )
        deleted[table.name] = conn.execute(table.delete().where(condition)).rowcount or 0
    return deleted


def _reset_sequences(conn: sa.Connection) -> None:
    for table in APP_TABLES:
        conn.execute(
            sa.text(
                f"SELECT setval(s.seq, (SELECT COALESCE(MAX(id), 0) + 1 FROM {table.name}), false) "
                f"FROM (SELECT pg_get_serial_sequence('{table.name}', 'id') AS seq) AS s "
                "WHERE s.seq IS NOT NULL"
            )
        )


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _write_file(path: Path, data: bytes, made_dirs: set[Path]) -> bool:
    """Write ``data`` atomically unless the file already holds it; True when written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    parent = path.parent
    if parent not in made_dirs:
        parent.mkdir(parents=True, exist_ok=True)
        made_dirs.add(parent)
    tmp = parent / f".{path.name}.demo-tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def seed_demo(
    engine: sa.Engine,
    files_root: Path,
    *,
    tenants: int = 3,
    scale: int = 1,
    seed: int = 42,
    today: date,
    progress: Callable[[int], None] | None = None,
    progress_total: Callable[[int], None] | None = None,
) -> SeedReport:
    """Fill the application tables (and ``files_root``) with the demo of ``tenants`` tenants
    at ``scale``, replacing an earlier demo of the same tenants.

    ``progress_total(n)`` is called once with the number of steps (rows plus files) and
    ``progress(k)`` each time ``k`` more are done. Runs in one transaction: on error the
    database is left as it was (files already written stay; they are rewritten next time).
    """
    if isinstance(today, datetime):
        today = today.date()
    if tenants < 1:
        raise ValueError(f"tenants must be at least 1, got {tenants}")
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    files_root = Path(files_root)
    created = create_app_schema(engine)
    slugs = demo_slugs(tenants)

    with engine.begin() as conn:
        deleted = _delete_demo_rows(conn, slugs)
        bases = {
            t.name: conn.execute(sa.select(sa.func.max(t.c.id))).scalar() or 0 for t in APP_TABLES
        }
        plan = _Plan(today, scale, bases)
        for index in range(tenants):
            _TenantBuilder(plan, index, demo_tenant(index), seed).build()

        total_rows = sum(len(rows) for rows in plan.rows.values())
        if progress_total:
            progress_total(total_rows + len(plan.files))
        for table in APP_TABLES:
            for chunk in _chunks(plan.rows[table.name], CHUNK_ROWS):
                conn.execute(table.insert(), chunk)
                if progress:
                    progress(len(chunk))
        if conn.dialect.name == "postgresql":
            _reset_sequences(conn)

        made_dirs: set[Path] = set()
        unchanged = pending = 0
        total_bytes = 0
        for relpath, data in plan.files.items():
            if not _write_file(files_root / relpath, data, made_dirs):
                unchanged += 1
            total_bytes += len(data)
            pending += 1
            if progress and pending >= _FILE_PROGRESS_EVERY:
                progress(pending)
                pending = 0
        if progress and pending:
            progress(pending)

    return SeedReport(
        tenants=slugs,
        rows={name: len(rows) for name, rows in plan.rows.items()},
        rows_deleted=deleted,
        files_written=len(plan.files),
        file_bytes=total_bytes,
        files_unchanged=unchanged,
        today=today,
        seed=seed,
        scale=scale,
        created_tables=created,
    )
