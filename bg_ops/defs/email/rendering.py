"""Email templates: Jinja2 files per notification type, an HTML (autoescaped) and a plain
text version each, inside a shared layout branded with the tenant's company name.

A notification type ``name`` is three files in ``templates/``: ``name.subject.txt``,
``name.txt`` and ``name.html``. Undefined variables are errors (``StrictUndefined``): a
template never renders half a mail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATES_DIR = Path(__file__).with_name("templates")


class TemplateError(ValueError):
    """A missing template or variable, named with the fix."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@lru_cache(maxsize=1)
def _environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    loader = jinja2.FileSystemLoader(TEMPLATES_DIR)
    common = dict(loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                  trim_blocks=False, auto_reload=False)
    html = jinja2.Environment(autoescape=True, **common)
    text = jinja2.Environment(autoescape=False, **common)
    return html, text


def template_names() -> list[str]:
    return sorted(p.name[: -len(".subject.txt")] for p in TEMPLATES_DIR.glob("*.subject.txt"))


def render(name: str, context: Mapping, *, company_name: str, company_slug: str = "") -> Rendered:
    """Render notification ``name`` for a tenant; raise ``TemplateError`` naming what is wrong."""
    _check_name(name)
    html_env, text_env = _environments()
    values = {**dict(context or {}), "company": {"name": company_name, "slug": company_slug}}
    values["subject"] = subject = _subject(text_env, name, values)
    text = _render(text_env, name, f"{name}.txt", values)
    html = _render(html_env, name, f"{name}.html", values)
    return Rendered(subject=subject, text=text.strip() + "\n", html=html)


def render_subject(name: str, context: Mapping, *, company_name: str, company_slug: str = "") -> str:
    """Only the subject line of notification ``name`` (the rest can be rendered later)."""
    _check_name(name)
    values = {**dict(context or {}), "company": {"name": company_name, "slug": company_slug}}
    return _subject(_environments()[1], name, values)


def _subject(text_env: jinja2.Environment, name: str, values: Mapping) -> str:
    subject = " ".join(_render(text_env, name, f"{name}.subject.txt", values).split())
    if not subject:
        raise TemplateError(f"template {name!r} rendered an empty subject: fix {name}.subject.txt")
    return subject


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith((".", "_")):
        raise TemplateError(f"template name {name!r} is not valid: use one of {', '.join(template_names())}")


def _render(env: jinja2.Environment, name: str, filename: str, values: Mapping) -> str:
    try:
        template = env.get_template(filename)
    except jinja2.TemplateNotFound:
        raise TemplateError(
            f"template {name!r} has no {filename} in {TEMPLATES_DIR}: add the file or use one "
            f"of {', '.join(template_names())}"
        ) from None
    try:
        return template.render(values)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {name!r} ({filename}): {exc.message}: add it to the context") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {name!r} ({filename}) line {exc.lineno}: {exc.message}") from None
