"""Archival PDFs (F5): the approval journey and the generic document record, with fpdf2.

Fonts. fpdf2's built-in fonts are Latin-1 only, so text is set in DejaVu Sans (regular and
bold), located on the machine (Debian package ``fonts-dejavu-core``; matplotlib's copy also
works) — bg_ops ships no font. Characters DejaVu lacks (CJK) use a fallback font when one is
installed (Noto Sans CJK, Droid Sans Fallback, WenQuanYi, AR PL); without one they print as
"□" and the document says how many characters could not be shown.

Speed (PERFORMANCE.md B7: warm render < 50 ms). fpdf2 parses a TrueType file in ``add_font``
and, when the PDF is written, subsets the parsed font *in place*, so neither the file nor the
parsed font can be reused as is. ``FontBook`` therefore does the expensive work once per
process:

- it cuts DejaVu down to a small core (Latin-1 and Extended-A, Greek, Cyrillic, common
  punctuation and symbols: about 700 of its 6,000 glyphs, since each document's subsetting
  costs in proportion to the glyphs of the font it starts from) and an extended face for
  the rest of its common blocks, without layout tables or hinting, and keeps them as
  bytes, cached on disk across processes (``~/.cache/bg_ops/fonts``, keyed by the source
  file's hash), so only the first process on a machine pays for the cut;
- it parses each face once into a template fpdf2 font (character map, widths, metrics);
- each document gets a shallow copy of the template with its own subset map and a fresh,
  lazily loaded font object built from the prepared bytes (tables are read only when the
  subsetter touches them; bounding boxes are not recomputed since outlines never change).
  A face is attached to a document only when the document uses one of its characters.

Text is laid out here (word wrap from cached widths, one ``FPDF.text`` call per run of a
font) instead of ``multi_cell``, whose line breaking re-measures the line for every
character added. Characters outside the core switch to the extended face, the full DejaVu
face, then the fallback font, per run of text. No text shaping: right-to-left scripts and
scripts that need shaping (Arabic, Indic) print their characters unjoined, left to right.

Output is deterministic: the same input gives the same bytes (the creation date is the
document's version time), so a retried upload of the same version finds its own file.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import os
import re
import tempfile
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bg_ops.db.app_schema import (
    Approval,
    ApprovalFile,
    ApprovalStep,
    CoreRequest,
    Estimate,
    Invoice,
    Project,
    User,
)
from bg_ops.defs.tenants.logic import Tenant
from bg_ops.util.files import MissingFile, UnsafePath, resolve_under_root

# -- fonts ----------------------------------------------------------------------------------

FONT_PACKAGE_HINT = (
    "install the DejaVu fonts (Debian/Ubuntu: apt-get install fonts-dejavu-core; Fedora: "
    "dnf install dejavu-sans-fonts; or pip install matplotlib, which carries a copy)"
)
REGULAR_FILE = "DejaVuSans.ttf"
BOLD_FILE = "DejaVuSans-Bold.ttf"
FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",  # Debian, Ubuntu: fonts-dejavu-core
    "/usr/share/fonts/dejavu-sans-fonts",  # Fedora
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/TTF",  # Arch
    "/usr/share/fonts/truetype",
    "/usr/local/share/fonts",
    "/usr/local/share/fonts/dejavu",
    "/opt/homebrew/share/fonts",
    "/Library/Fonts",
    "~/.local/share/fonts",
    "~/.fonts",
)
# (path, face index in a collection). CJK faces: DejaVu has none.
FALLBACK_FONT_CANDIDATES: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 0),  # fonts-noto-cjk
    ("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc", 0),
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", 0),
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0),  # fonts-droid-fallback
    ("/usr/share/fonts/truetype/droid/DroidSansFallback.ttf", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),  # fonts-wqy-microhei
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/arphic/uming.ttc", 0),
)

# The faces cut out of DejaVu, each parsed once and cached on disk. A document embeds
# "core" (small, so cheap to subset per document); "extended" only when it uses one of its
# characters; the whole of DejaVu only for what neither has (Armenian, Hebrew, Arabic …).
CORE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0020, 0x007E), (0x00A0, 0x017F),  # Basic Latin, Latin-1, Latin Extended-A
    (0x0192, 0x0192), (0x0218, 0x021B),  # ƒ, Romanian ș ț
    (0x02C6, 0x02DD),  # spacing accents
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x045F), (0x0490, 0x0491),  # Cyrillic (Russian, Ukrainian, Serbian, Bulgarian …)
    (0x2010, 0x2027), (0x2030, 0x203A), (0x2044, 0x2044),  # – — ‘ ’ “ ” • … ‰ ‹ ›
    (0x20A0, 0x20CF),  # currency: € ₽ ₴ ₹ ₺
    (0x2103, 0x2103), (0x2116, 0x2116), (0x2122, 0x2122),  # ℃ № ™
    (0x2190, 0x2193), (0x2212, 0x2212), (0x221E, 0x221E), (0x2248, 0x2248), (0x2260, 0x2260),
    (0x2264, 0x2265),  # ← ↑ → ↓ − ∞ ≈ ≠ ≤ ≥
    (0x25A0, 0x25A1), (0x25B2, 0x25B2), (0x25BC, 0x25BC), (0x25CB, 0x25CB), (0x25CF, 0x25CF),  # ■ □ ▲ ▼ ○ ●
    (0x2605, 0x2606), (0x2610, 0x2612), (0x2713, 0x2718),  # ★ ☆ ☐ ☑ ☒ ✓ ✔ ✕ ✖ ✗ ✘
    (0xFFFD, 0xFFFD),
)
EXTENDED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0180, 0x024F),  # Latin Extended-B
    (0x02B0, 0x036F),  # spacing modifiers, combining diacritics
    (0x0460, 0x052F),  # Cyrillic extended (Kazakh, Uzbek, Tatar …) and supplement
    (0x1E00, 0x1EFF),  # Latin Extended Additional (Vietnamese, Welsh …)
    (0x2000, 0x20CF),  # the rest of punctuation, super/subscripts
    (0x2100, 0x22FF),  # letterlike, number forms, arrows, mathematical operators
    (0x25A0, 0x27BF),  # geometric shapes, miscellaneous symbols, dingbats
    (0xFB00, 0xFB06),  # Latin ligatures
)
CORE_VERSION = "3"  # bump when the preparation below changes: it keys the disk cache
MISSING_GLYPH = "\u25a1"  # □
# Tables fpdf2 drops when subsetting anyway, and layout/hinting extras nothing here reads.
_DROP_TABLES = ["FFTM", "GDEF", "GPOS", "GSUB", "MATH", "hdmx", "meta", "kern", "BASE", "JSTF",
                "DSIG", "LTSH", "VDMX", "PCLT", "gasp"]


class FontNotFound(RuntimeError):
    """The DejaVu fonts are not on this machine."""


@dataclass(frozen=True)
class FontFiles:
    regular: Path
    bold: Path
    fallbacks: tuple[tuple[Path, int], ...] = ()


def _matplotlib_font_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"


def locate_fonts(search_dirs: Sequence[str | Path] | None = None) -> FontFiles:
    """DejaVu Sans regular and bold, plus any CJK fallback installed on the machine.

    Looks in ``search_dirs`` when given, else in the usual font folders, then in matplotlib's
    copy, then anywhere under /usr/share/fonts. Raises ``FontNotFound`` naming the package.
    """
    dirs = [Path(d).expanduser() for d in (search_dirs if search_dirs is not None else FONT_DIRS)]
    if search_dirs is None:
        mpl = _matplotlib_font_dir()
        if mpl is not None:
            dirs.append(mpl)
    for folder in dirs:
        regular, bold = folder / REGULAR_FILE, folder / BOLD_FILE
        if regular.is_file() and bold.is_file():
            return FontFiles(regular, bold, _locate_fallbacks())
    if search_dirs is None:
        for root in (Path("/usr/share/fonts"), Path("/usr/local/share/fonts")):
            if root.is_dir():
                for regular in sorted(root.rglob(REGULAR_FILE)):
                    if (regular.parent / BOLD_FILE).is_file():
                        return FontFiles(regular, regular.parent / BOLD_FILE, _locate_fallbacks())
    looked = ", ".join(str(d) for d in dirs)
    raise FontNotFound(
        f"archival PDFs need {REGULAR_FILE} and {BOLD_FILE} (DejaVu Sans) and found neither in "
        f"{looked}: {FONT_PACKAGE_HINT}"
    )


def _locate_fallbacks() -> tuple[tuple[Path, int], ...]:
    for path, index in FALLBACK_FONT_CANDIDATES:
        if Path(path).is_file():
            return ((Path(path), index),)
    return ()


def _font_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bg_ops" / "fonts"


def _prepare_subset(source: Path, ranges: tuple[tuple[int, int], ...], cache_dir: Path | None, *,
                    refresh: bool = False) -> tuple[bytes, bytes]:
    """(font with character map, font to embed) for the characters of ``ranges`` in ``source``.

    The embedded variant has no cmap, OS/2, name or glyph names: a PDF's CID font does not
    need them, and leaving them out makes every document's subsetting cheaper.
    """
    from fontTools import subset as ftsubset
    from fontTools import ttLib
    from fontTools import version as fonttools_version

    raw = source.read_bytes()
    key = hashlib.sha256(raw + f"|{CORE_VERSION}|{fonttools_version}|{ranges}".encode()).hexdigest()[:20]
    names = (f"{source.stem}-{key}.parse.ttf", f"{source.stem}-{key}.embed.ttf")
    if cache_dir is not None and not refresh:
        try:
            return tuple((cache_dir / n).read_bytes() for n in names)  # type: ignore[return-value]
        except OSError:
            pass

    font = ttLib.TTFont(io.BytesIO(raw), recalcTimestamp=False, lazy=True)
    # No TrueType hinting: PDF viewers rasterise without it, and without it every document's
    # subset is about 2.4 times smaller and quicker to make.
    options = ftsubset.Options(
        notdef_outline=True, recommended_glyphs=True, glyph_names=True, layout_features=[], hinting=False,
        legacy_kern=False, name_IDs=["*"], name_languages=["*"], name_legacy=True,
    )
    options.drop_tables += _DROP_TABLES
    subsetter = ftsubset.Subsetter(options)
    subsetter.populate(unicodes=[cp for lo, hi in ranges for cp in range(lo, hi + 1)])
    subsetter.subset(font)
    out = io.BytesIO()
    font.save(out)
    with_cmap = out.getvalue()
    for tag in ("cmap", "OS/2", "name"):
        if tag in font:
            del font[tag]
    font["post"].formatType = 3.0
    out = io.BytesIO()
    font.save(out)
    embed = out.getvalue()

    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            for name, data in zip(names, (with_cmap, embed)):
                fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".font-", suffix=".part")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, cache_dir / name)
        except OSError:
            pass  # a read-only home only costs the next process the same preparation
    return with_cmap, embed


class _Face:
    """One font face, parsed once; ``attach`` gives a document its own working copy."""

    def __init__(self, family: str, style: str, template, source: bytes | Path, *,
                 glyph_order: list[str] | None = None, collection_font_number: int = 0):
        self.family = family
        self.style = style
        self.key = family + style
        self.template = template
        self.source = source
        self.glyph_order = glyph_order
        self.collection_font_number = collection_font_number
        self.cmap = template.cmap
        self.missing_width = template.desc.missing_width
        # Keyed by character, not code point: layout measures strings, this saves an ord() per character.
        self.chars = frozenset(chr(cp) for cp in template.cmap)
        self.widths = {chr(cp): w for cp, w in template.cw.items()}

    def has(self, cp: int) -> bool:
        return cp in self.cmap

    def units(self, text: str) -> int:
        """Advance width of ``text`` in 1/1000 of the font size."""
        widths, missing = self.widths, self.missing_width
        try:
            return sum(map(widths.__getitem__, text))
        except KeyError:
            return sum(widths.get(c, missing) for c in text)

    def attach(self, pdf) -> None:
        """Register this face with ``pdf`` (once): template data shared, subsetting state own."""
        if self.key in pdf.fonts:
            return
        from fontTools import ttLib
        from fpdf.fonts import SubsetMap

        face = copy.copy(self.template)
        if isinstance(self.source, bytes):
            src = io.BytesIO(self.source)
        else:
            src = self.source
        font = ttLib.TTFont(src, recalcTimestamp=False, recalcBBoxes=False, lazy=True,
                            fontNumber=self.collection_font_number)
        if self.glyph_order is not None:
            font.setGlyphOrder(self.glyph_order)
        face.ttfont = font
        face.desc = copy.copy(self.template.desc)  # output() writes this document's ids into it
        face.i = len(pdf.fonts) + 1
        face.missing_glyphs = []
        face.biggest_size_pt = 0
        face.subset = SubsetMap(face)
        pdf.fonts[self.key] = face


class FontBook:
    """The faces a document can use, parsed once per process (see the module docstring).

    ``regular``/``bold``: DejaVu's core; ``extended(bold)``: the rest of its common blocks;
    ``full(bold)``: all of DejaVu; ``fallbacks()``: CJK faces, regular only. All but the core
    are loaded on first need.
    """

    def __init__(self, files: FontFiles, *, cache_dir: Path | None = None):
        from fpdf import FPDF
        from fpdf.fonts import TTFFont

        self.files = files
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._tpl = FPDF()
        self._TTFFont = TTFFont
        self.regular = self._subset_face("bgsans", "", files.regular, CORE_RANGES)
        self.bold = self._subset_face("bgsans", "B", files.bold, CORE_RANGES)
        self._lazy: dict[str, _Face] = {}
        self._fallbacks: list[_Face] | None = None

    def _subset_face(self, family: str, style: str, path: Path, ranges) -> _Face:
        with_cmap, embed = _prepare_subset(path, ranges, self.cache_dir)
        try:
            template = self._TTFFont(self._tpl, io.BytesIO(with_cmap), family + style, style)
        except Exception:  # noqa: BLE001 - a damaged cache file: cut the font again and replace it
            with_cmap, embed = _prepare_subset(path, ranges, self.cache_dir, refresh=True)
            template = self._TTFFont(self._tpl, io.BytesIO(with_cmap), family + style, style)
        order = list(template.ttfont.getGlyphOrder())
        return _Face(family, style, template, embed, glyph_order=order)

    def extended(self, bold: bool) -> _Face:
        style = "B" if bold else ""
        with self._lock:
            face = self._lazy.get("bgsansx" + style)
            if face is None:
                path = self.files.bold if bold else self.files.regular
                face = self._lazy["bgsansx" + style] = self._subset_face("bgsansx", style, path, EXTENDED_RANGES)
            return face

    def full(self, bold: bool) -> _Face:
        style = "B" if bold else ""
        with self._lock:
            face = self._lazy.get("bgsansfull" + style)
            if face is None:
                path = self.files.bold if bold else self.files.regular
                template = self._TTFFont(self._tpl, path, "bgsansfull" + style, style)
                face = self._lazy["bgsansfull" + style] = _Face("bgsansfull", style, template, path)
            return face

    def fallbacks(self) -> list[_Face]:
        with self._lock:
            if self._fallbacks is None:
                faces = []
                for n, (path, index) in enumerate(self.files.fallbacks):
                    try:
                        template = self._TTFFont(self._tpl, path, f"bgfallback{n}", "", None, None, None, index)
                    except Exception:  # noqa: BLE001 - an unreadable optional font is no font
                        continue
                    faces.append(_Face(f"bgfallback{n}", "", template, path, collection_font_number=index))
                self._fallbacks = faces
            return self._fallbacks

    def with_fallbacks(self, fallbacks: Sequence[tuple[str | Path, int]]) -> FontBook:
        """This book with other fallback fonts (path, face index); the parsed DejaVu faces are shared."""
        other = copy.copy(self)
        other.files = FontFiles(self.files.regular, self.files.bold, tuple((Path(p), i) for p, i in fallbacks))
        other._fallbacks = None
        return other

    def face_for(self, cp: int, bold: bool) -> _Face | None:
        core = self.bold if bold else self.regular
        if core.has(cp):
            return core
        for face in (self.extended(bold), self.full(bold)):
            if face.has(cp):
                return face
        for face in self.fallbacks():
            if face.has(cp):
                return face
        return None


_BOOK: FontBook | None = None
_BOOK_LOCK = threading.Lock()


def font_book() -> FontBook:
    """The process-wide ``FontBook`` (built on first use)."""
    global _BOOK
    if _BOOK is None:
        with _BOOK_LOCK:
            if _BOOK is None:
                _BOOK = FontBook(locate_fonts(), cache_dir=_font_cache_dir())
    return _BOOK


# -- layout ---------------------------------------------------------------------------------

PT_PER_MM = 72 / 25.4
PAGE_W, PAGE_H = 210.0, 297.0
MARGIN = 18.0
CONTENT_W = PAGE_W - 2 * MARGIN
FOOTER_Y = PAGE_H - 10.0
BOTTOM = PAGE_H - 18.0
GREY = (100, 100, 100)
BLACK = (20, 20, 20)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")


def clean_text(value: object) -> str:
    """Printable text: NFC (so "é" is one glyph), tabs as spaces, no control characters."""
    text = "" if value is None else str(value)
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    return _CONTROL.sub("", text)


class _Writer:
    """A page-flowing writer on top of fpdf2's primitives (see the module docstring)."""

    def __init__(self, book: FontBook, *, title: str, author: str, footer: str, as_of: datetime | None):
        from fpdf import FPDF

        self.book = book
        self.pdf = FPDF(unit="mm", format="A4")
        self.pdf.set_auto_page_break(False)
        self.pdf.set_margins(MARGIN, MARGIN, MARGIN)
        if as_of is not None:
            self.pdf.set_creation_date(as_of)
        self.pdf.set_title(clean_text(title))
        if author:
            self.pdf.set_author(clean_text(author))
        self.pdf.set_creator("bg_ops archival")
        self.footer = clean_text(footer)
        self.missing = 0
        self.y = MARGIN
        self._color: tuple[int, int, int] | None = None
        self._new_page()

    # -- primitives ---------------------------------------------------------------------
    def _runs(self, text: str, bold: bool) -> list[tuple[_Face, str]]:
        """``text`` split into runs of one face each; characters no font has become □."""
        core = self.book.bold if bold else self.book.regular
        if core.chars.issuperset(text):
            return [(core, text)] if text else []
        runs: list[tuple[_Face, str]] = []
        current, buf = core, []
        for ch in text:
            cp = ord(ch)
            face = core if core.has(cp) else self.book.face_for(cp, bold)
            if face is None:
                self.missing += 1
                face, ch = core, MISSING_GLYPH
            if face is not current and buf:
                runs.append((current, "".join(buf)))
                buf = []
            current = face
            buf.append(ch)
        if buf:
            runs.append((current, "".join(buf)))
        return runs

    def _units(self, text: str, bold: bool) -> int:
        """Advance width of ``text`` in 1/1000 of the font size, across faces."""
        core = self.book.bold if bold else self.book.regular
        try:
            return sum(map(core.widths.__getitem__, text))
        except KeyError:
            pass
        total = 0
        for ch in text:
            face = self.book.face_for(ord(ch), bold) or core
            total += face.units(ch if face.has(ord(ch)) else MISSING_GLYPH)
        return total

    def width(self, text: str, size: float, bold: bool = False) -> float:
        """Width of ``text`` in mm."""
        return self._units(text, bold) * size / 1000 / PT_PER_MM

    def _set_color(self, color: tuple[int, int, int]) -> None:
        if color != self._color:
            self.pdf.set_text_color(*color)
            self._color = color

    def draw(self, x: float, y: float, text: str, size: float, *, bold: bool = False,
             color: tuple[int, int, int] = BLACK) -> float:
        """Print ``text`` with its baseline at ``y``; return the x where it ended."""
        self._set_color(color)
        for face, run in self._runs(text, bold):
            face.attach(self.pdf)
            self.pdf.set_font(face.family, face.style, size)
            self.pdf.text(x, y, run)
            x += face.units(run) * size / 1000 / PT_PER_MM
        return x

    def wrap(self, text: str, width: float, size: float, bold: bool = False) -> list[str]:
        """Greedy word wrap into lines at most ``width`` mm wide; newlines start a new line,
        runs of spaces collapse, a word longer than a line is cut."""
        limit = width * PT_PER_MM * 1000 / size  # in font units
        space = self._units(" ", bold)
        lines: list[str] = []
        for paragraph in clean_text(text).split("\n"):
            line, line_w = "", 0
            for word in paragraph.split():
                w = self._units(word, bold)
                if line and line_w + space + w <= limit:
                    line, line_w = f"{line} {word}", line_w + space + w
                    continue
                if line:
                    lines.append(line)
                while w > limit and len(word) > 1:
                    cut = self._fit(word, limit, bold)
                    lines.append(word[:cut])
                    word = word[cut:]
                    w = self._units(word, bold)
                line, line_w = word, w
            lines.append(line)
        return lines

    def _fit(self, word: str, limit: float, bold: bool) -> int:
        """How many leading characters of ``word`` fit in ``limit`` font units (at least one)."""
        total = 0
        for i, ch in enumerate(word):
            total += self._units(ch, bold)
            if total > limit:
                return max(1, i)
        return len(word)

    # -- flow ---------------------------------------------------------------------------
    def _footer(self) -> None:
        page = self.pdf.page
        self.draw(MARGIN, FOOTER_Y, self.footer, 7.5, color=GREY)
        label = f"Page {page}"
        self.draw(PAGE_W - MARGIN - self.width(label, 7.5), FOOTER_Y, label, 7.5, color=GREY)

    def _new_page(self) -> None:
        if self.pdf.page:
            self._footer()
        self.pdf.add_page()
        self._color = None
        self.y = MARGIN

    def need(self, height: float) -> None:
        if self.y + height > BOTTOM:
            self._new_page()

    def gap(self, height: float) -> None:
        self.y += height

    def line(self, text: str, size: float = 10, *, bold: bool = False, color=BLACK, indent: float = 0.0,
             leading: float = 1.45) -> None:
        height = size / PT_PER_MM * leading
        self.need(height)
        self.y += height
        self.draw(MARGIN + indent, self.y - height * 0.28, text, size, bold=bold, color=color)

    def paragraph(self, text: str, size: float = 10, *, bold: bool = False, color=BLACK, indent: float = 0.0,
                  leading: float = 1.45) -> None:
        for line in self.wrap(text, CONTENT_W - indent, size, bold):
            self.line(line, size, bold=bold, color=color, indent=indent, leading=leading)

    def rule(self) -> None:
        self.need(4)
        self.y += 2
        self.pdf.set_draw_color(190, 190, 190)
        self.pdf.set_line_width(0.2)
        self.pdf.line(MARGIN, self.y, PAGE_W - MARGIN, self.y)
        self.y += 2

    def fields(self, fields: Iterable[tuple[str, str]], size: float = 10, label_w: float = 36.0) -> None:
        """Label/value pairs in two columns; long values wrap in theirs."""
        height = size / PT_PER_MM * 1.45
        for label, value in fields:
            lines = self.wrap(clean_text(value) or "—", CONTENT_W - label_w, size)
            self.need(height * min(len(lines), 3))
            for n, text in enumerate(lines):
                self.need(height)
                self.y += height
                baseline = self.y - height * 0.28
                if n == 0:
                    self.draw(MARGIN, baseline, clean_text(label), size * 0.9, color=GREY)
                self.draw(MARGIN + label_w, baseline, text, size)

    def heading(self, text: str, size: float = 12) -> None:
        self.need(size / PT_PER_MM * 4)  # never a heading alone at the foot of a page
        self.gap(2)
        self.paragraph(text, size, bold=True)
        self.gap(0.5)

    def finish(self) -> bytes:
        if self.missing:
            self.gap(3)
            self.paragraph(
                f"{self.missing} character(s) shown as {MISSING_GLYPH} have no font on the archiving machine "
                "(for Chinese, Japanese and Korean text install fonts-noto-cjk).", 8, color=GREY)
        self._footer()
        return bytes(self.pdf.output())


# -- what is rendered -----------------------------------------------------------------------

DECISIONS = {
    "approved": "\u2713 Approved",  # ✓
    "rejected": "\u2717 Rejected",  # ✗
    "pending": "\u2026 Pending",  # …
    "skipped": "\u2013 Skipped",  # –
}


@dataclass(frozen=True)
class JourneyStep:
    stage: int
    approver_name: str
    approver_email: str | None
    decision: str  # approval_steps.status: pending, approved, rejected, skipped
    responded_at: datetime | None = None
    due_at: datetime | None = None
    comment: str | None = None


@dataclass(frozen=True)
class JourneyAttachment:
    path: str  # relative to the files root
    size_bytes: int | None = None  # None: not found on disk when archived
    uploaded_at: datetime | None = None


@dataclass(frozen=True)
class ApprovalJourney:
    tenant_name: str
    timezone: str  # IANA name: timestamps print in this zone, with its name
    approval_id: int
    project_name: str
    title: str
    status: str
    created_at: datetime | None
    completed_at: datetime | None
    due_at: datetime | None = None
    client_name: str | None = None
    steps: tuple[JourneyStep, ...] = ()
    attachments: tuple[JourneyAttachment, ...] = ()


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_local(value: datetime | None, zone_name: str) -> str:
    """``2026-11-23 14:05 Europe/Berlin (UTC+01:00)``; "—" when unknown."""
    if value is None:
        return "\u2014"
    zone = _zone(zone_name)
    local = value.astimezone(zone)
    offset = local.strftime("%z")
    offset = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    return f"{local:%Y-%m-%d %H:%M} {zone.key} ({offset})"


def human_size(size: int | None) -> str:
    if size is None:
        return "missing"
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def status_label(status: str) -> str:
    """"✓ Completed", "✗ Rejected", "In review" …"""
    marks = {"completed": "\u2713 ", "approved": "\u2713 ", "rejected": "\u2717 ", "canceled": "\u2013 "}
    return marks.get(status, "") + clean_text(status).replace("_", " ").capitalize()


def render_approval_journey(data: ApprovalJourney, *, book: FontBook | None = None) -> bytes:
    """The approval's archived record: fields, every stage and step, attachments."""
    zone = data.timezone
    title = clean_text(data.title)
    w = _Writer(
        book or font_book(), title=f"Approval #{data.approval_id}: {title}", author=data.tenant_name,
        footer=f"{clean_text(data.tenant_name)} \u00b7 Approval #{data.approval_id} \u00b7 archived record",
        as_of=data.completed_at or data.created_at,
    )
    w.paragraph(data.tenant_name, 9, bold=True, color=GREY)
    w.paragraph("Approval journey", 18, bold=True, leading=1.3)
    w.paragraph(title, 13, bold=True)
    w.gap(2)
    project = clean_text(data.project_name) + (f" ({clean_text(data.client_name)})" if data.client_name else "")
    decided = sum(1 for s in data.steps if s.decision in ("approved", "rejected"))
    w.fields([
        ("Approval", f"#{data.approval_id}"),
        ("Project", project),
        ("Status", status_label(data.status)),
        ("Created", format_local(data.created_at, zone)),
        ("Completed", format_local(data.completed_at, zone)),
        ("Due", format_local(data.due_at, zone)),
        ("Decisions", f"{decided} of {len(data.steps)} step(s)"),
    ])
    w.rule()

    stages = sorted({s.stage for s in data.steps})
    if not stages:
        w.heading("Stages")
        w.paragraph("No routing steps were recorded.", 10, color=GREY)
    for stage in stages:
        steps = [s for s in data.steps if s.stage == stage]
        w.heading(f"Stage {stage}", 12)
        for step in steps:
            w.need(18)
            who = clean_text(step.approver_name) + (f" <{clean_text(step.approver_email)}>" if step.approver_email else "")
            decision = DECISIONS.get(step.decision, clean_text(step.decision).capitalize())
            w.paragraph(f"{decision} \u2014 {who}", 10, bold=True, indent=2)
            when = (f"Responded {format_local(step.responded_at, zone)}" if step.responded_at
                    else "No response recorded")
            if step.due_at is not None:
                when += f" \u00b7 due {format_local(step.due_at, zone)}"
            w.paragraph(when, 8.5, color=GREY, indent=6)
            if step.comment and clean_text(step.comment).strip():
                w.paragraph(f"\u201c{clean_text(step.comment).strip()}\u201d", 10, indent=6)
            w.gap(1.5)
    w.rule()

    w.heading("Attachments")
    if not data.attachments:
        w.paragraph("No attachments.", 10, color=GREY)
    for item in data.attachments:
        uploaded = f", uploaded {format_local(item.uploaded_at, zone)}" if item.uploaded_at else ""
        w.paragraph(f"\u2022 {clean_text(item.path)} \u2014 {human_size(item.size_bytes)}{uploaded}", 9.5, indent=2)
    return w.finish()


def render_document(
    title: str,
    fields: Sequence[tuple[str, str]],
    lines: Sequence[str] = (),
    *,
    tenant_name: str = "",
    kind: str = "",
    as_of: datetime | None = None,
    book: FontBook | None = None,
) -> bytes:
    """A one-record document (core request, invoice, estimate): heading, fields, then lines.

    ``as_of`` (the record's version time) is the PDF's creation date; with it the same input
    always gives the same bytes.
    """
    w = _Writer(book or font_book(), title=title, author=tenant_name,
                footer=" \u00b7 ".join(p for p in (clean_text(tenant_name), clean_text(kind), "archived record") if p),
                as_of=as_of)
    if tenant_name:
        w.paragraph(tenant_name, 9, bold=True, color=GREY)
    if kind:
        w.paragraph(kind, 18, bold=True, leading=1.3)
    w.paragraph(title, 13, bold=True)
    w.gap(2)
    w.fields(fields)
    if lines:
        w.rule()
        for text in lines:
            w.paragraph(text, 10)
            w.gap(1)
    return w.finish()


# -- loaders: one tenant's rows, every query filtered by company_id --------------------------


@dataclass(frozen=True)
class LoadedDocument:
    """What archival needs of one record: how to render it and where it goes."""

    doc_type: str
    doc_id: int
    status: str
    changed_at: datetime | None  # approvals: completed_at; others: updated_at (UTC)
    project_name: str | None
    name: str  # file name stem before the version: "17 Spring catalogue", "INV-0042"
    journey: ApprovalJourney | None = None
    document: dict = field(default_factory=dict)  # render_document keyword arguments

    def render(self, book: FontBook | None = None) -> bytes:
        if self.journey is not None:
            return render_approval_journey(self.journey, book=book)
        return render_document(**self.document, book=book)


def _user_label(name: str | None, email: str | None) -> str:
    if not name:
        return "\u2014"
    return f"{name} <{email}>" if email else name


def _money(amount, currency: str | None) -> str:
    if amount is None:
        return "\u2014"
    value = Decimal(str(amount)).quantize(Decimal("0.01"))
    return f"{value:,} {currency or ''}".strip()


def load_approval_journey(session: Session, tenant: Tenant, approval_id: int, *,
                          files_root: str | Path | None = None) -> ApprovalJourney | None:
    """The approval of ``tenant`` with its steps and attachments, or None when it is not theirs.

    Attachment sizes are read under ``files_root`` when given (None: "missing").
    """
    row = session.execute(
        sa.select(Approval, Project.name.label("project_name"), Project.client_name)
        .outerjoin(Project, sa.and_(Project.id == Approval.project_id, Project.company_id == tenant.id))
        .where(Approval.id == approval_id, Approval.company_id == tenant.id)
    ).one_or_none()
    if row is None:
        return None
    approval: Approval = row[0]
    steps = session.execute(
        sa.select(ApprovalStep, User.full_name, User.email)
        .join(Approval, sa.and_(Approval.id == ApprovalStep.approval_id, Approval.company_id == tenant.id))
        .outerjoin(User, sa.and_(User.id == ApprovalStep.approver_id, User.company_id == tenant.id))
        .where(ApprovalStep.approval_id == approval_id)
        .order_by(ApprovalStep.stage, ApprovalStep.id)
    ).all()
    files = session.execute(
        sa.select(ApprovalFile.path, ApprovalFile.uploaded_at)
        .join(Approval, sa.and_(Approval.id == ApprovalFile.approval_id, Approval.company_id == tenant.id))
        .where(ApprovalFile.approval_id == approval_id)
        .order_by(ApprovalFile.id)
    ).all()
    attachments = []
    for f in files:
        size = None
        if files_root is not None:
            try:
                size = resolve_under_root(files_root, f.path).stat().st_size
            except (UnsafePath, MissingFile, OSError):
                size = None
        attachments.append(JourneyAttachment(path=f.path, size_bytes=size, uploaded_at=f.uploaded_at))
    return ApprovalJourney(
        tenant_name=tenant.name,
        timezone=tenant.timezone,
        approval_id=approval.id,
        project_name=row.project_name or "No project",
        client_name=row.client_name,
        title=approval.title,
        status=approval.status,
        created_at=approval.created_at,
        completed_at=approval.completed_at,
        due_at=approval.due_at,
        steps=tuple(
            JourneyStep(stage=s.stage, approver_name=name or f"User #{s.approver_id}", approver_email=email,
                        decision=s.status, responded_at=s.responded_at, due_at=s.due_at, comment=s.comment)
            for s, name, email in steps
        ),
        attachments=tuple(attachments),
    )


def load_approval_document(session: Session, tenant: Tenant, approval_id: int, *,
                           files_root: str | Path | None = None) -> LoadedDocument | None:
    journey = load_approval_journey(session, tenant, approval_id, files_root=files_root)
    if journey is None:
        return None
    return LoadedDocument(
        doc_type="approval", doc_id=approval_id, status=journey.status, changed_at=journey.completed_at,
        project_name=journey.project_name, name=f"{approval_id} {journey.title}", journey=journey,
    )


def load_core_request_document(session: Session, tenant: Tenant, core_request_id: int, **_) -> LoadedDocument | None:
    row = session.execute(
        sa.select(CoreRequest, Project.name.label("project_name"), Project.client_name,
                  User.full_name.label("am_name"), User.email.label("am_email"))
        .outerjoin(Project, sa.and_(Project.id == CoreRequest.project_id, Project.company_id == tenant.id))
        .outerjoin(User, sa.and_(User.id == CoreRequest.account_manager_id, User.company_id == tenant.id))
        .where(CoreRequest.id == core_request_id, CoreRequest.company_id == tenant.id)
    ).one_or_none()
    if row is None:
        return None
    core: CoreRequest = row[0]
    zone = tenant.timezone
    fields = [
        ("Core request", f"#{core.id}"),
        ("Project", (row.project_name or "No project") + (f" ({row.client_name})" if row.client_name else "")),
        ("Status", core.status.replace("_", " ").capitalize()),
        ("Account manager", _user_label(row.am_name, row.am_email)),
        ("Submitted", format_local(core.submitted_at, zone)),
        ("Accepted", format_local(core.accepted_at, zone)),
        ("Last change", format_local(core.updated_at, zone)),
    ]
    return LoadedDocument(
        doc_type="core_request", doc_id=core.id, status=core.status, changed_at=core.updated_at,
        project_name=row.project_name, name=f"{core.id} {core.title}",
        document={"title": core.title, "fields": fields, "lines": (), "tenant_name": tenant.name,
                  "kind": "Core request", "as_of": core.updated_at},
    )


def load_invoice_document(session: Session, tenant: Tenant, invoice_id: int, **_) -> LoadedDocument | None:
    row = session.execute(
        sa.select(Invoice, Project.name.label("project_name"), Project.client_name)
        .outerjoin(Project, sa.and_(Project.id == Invoice.project_id, Project.company_id == tenant.id))
        .where(Invoice.id == invoice_id, Invoice.company_id == tenant.id)
    ).one_or_none()
    if row is None:
        return None
    inv: Invoice = row[0]
    zone = tenant.timezone
    fields = [
        ("Invoice", inv.number),
        ("Project", row.project_name or "No project"),
        ("Client", row.client_name or "\u2014"),
        ("Amount", _money(inv.amount, inv.currency)),
        ("Issued on", inv.issued_on.isoformat() if inv.issued_on else "\u2014"),
        ("Due on", inv.due_on.isoformat() if inv.due_on else "\u2014"),
        ("Status", inv.status.capitalize()),
        ("Paid", format_local(inv.paid_at, zone)),
        ("Last change", format_local(inv.updated_at, zone)),
    ]
    return LoadedDocument(
        doc_type="invoice", doc_id=inv.id, status=inv.status, changed_at=inv.updated_at,
        project_name=row.project_name, name=f"{inv.number}",
        document={"title": f"Invoice {inv.number}", "fields": fields, "lines": (), "tenant_name": tenant.name,
                  "kind": "Invoice", "as_of": inv.updated_at},
    )


def load_estimate_document(session: Session, tenant: Tenant, estimate_id: int, **_) -> LoadedDocument | None:
    row = session.execute(
        sa.select(Estimate, Project.name.label("project_name"), Project.client_name)
        .outerjoin(Project, sa.and_(Project.id == Estimate.project_id, Project.company_id == tenant.id))
        .where(Estimate.id == estimate_id, Estimate.company_id == tenant.id)
    ).one_or_none()
    if row is None:
        return None
    est: Estimate = row[0]
    fields = [
        ("Estimate", est.number),
        ("Project", row.project_name or "No project"),
        ("Client", row.client_name or "\u2014"),
        ("Amount", _money(est.amount, est.currency)),
        ("Status", est.status.capitalize()),
        ("Last change", format_local(est.updated_at, tenant.timezone)),
    ]
    return LoadedDocument(
        doc_type="estimate", doc_id=est.id, status=est.status, changed_at=est.updated_at,
        project_name=row.project_name, name=f"{est.number}",
        document={"title": f"Estimate {est.number}", "fields": fields, "lines": (), "tenant_name": tenant.name,
                  "kind": "Estimate", "as_of": est.updated_at},
    )


LOADERS = {
    "approval": load_approval_document,
    "core_request": load_core_request_document,
    "invoice": load_invoice_document,
    "estimate": load_estimate_document,
}
