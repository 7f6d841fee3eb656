"""Email templates: Jinja2 files per notification type, an HTML (autoescaped) and a plain
text version each, inside a shared layout branded with the tenant's company name.

A notification type ``name`` is three files in ``templates/``: ``name.subject.txt``,
``name.txt`` and ``name.html``. Undefined variables are errors (``StrictUndefined``): a
template never renders half a mail.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.meta
import jinja2.nodes

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
    # Compiled templates are kept on disk (Jinja's own cache, a private folder per user in the
    # temp dir, keyed by each file's source): a job run is a fresh process, and compiling its
    # templates there again cost about a tenth of a daily reminder run (B3).
    common = dict(loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                  trim_blocks=False, auto_reload=False, bytecode_cache=_bytecode_cache())
    html = jinja2.Environment(autoescape=True, **common)
    text = jinja2.Environment(autoescape=False, **common)
    return html, text


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    try:
        return jinja2.FileSystemBytecodeCache()
    except (OSError, RuntimeError):  # no usable temp dir: compile in memory, as before
        return None


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


def subject_renderer(name: str, *, company_name: str, company_slug: str = "") -> Callable[[Mapping], str]:
    """``render_subject`` of notification ``name`` for one tenant, as a function of the
    context: for thousands of subjects at once (the daily reminder run, B3). The template is
    looked up once, and when its subject line uses none of Jinja's globals (``range``,
    ``dict`` …) it renders in the context itself instead of a copy merged with them (a third
    of the time); the result and the errors are ``render_subject``'s."""
    _check_name(name)
    text_env = _environments()[1]
    filename = f"{name}.subject.txt"
    template = _template(text_env, name, filename)
    company = {"name": company_name, "slug": company_slug}
    uses_globals = bool(_names_loaded(text_env, filename) & set(template.globals))
    concat = text_env.concat
    parts = None if uses_globals else _plain_parts(text_env, filename)
    get_attribute = text_env.getattr

    def rendered(context: Mapping) -> str:
        values = {**context, "company": company}
        if uses_globals:
            return _subject(text_env, name, values)
        try:
            text = concat(template.root_render_func(template.new_context(values, shared=True)))
        except (jinja2.UndefinedError, jinja2.TemplateSyntaxError) as exc:
            raise _template_error(name, filename, exc) from None
        return _clean_subject(name, text)

    if parts is None:
        return rendered

    def subject(context: Mapping) -> str:
        # A line of text and ``{{ name }}`` / ``{{ name.attr }}`` only: joined here as Jinja
        # would join it (``str`` of each value, attributes looked up by Jinja's own getattr).
        # Anything unusual (a missing name, an undefined attribute) goes to Jinja, whose
        # result or error is the answer.
        try:
            out = []
            for literal, path in parts:
                if path is None:
                    out.append(literal)
                    continue
                value = company if path[0] == "company" else context[path[0]]
                for attribute in path[1:]:
                    value = get_attribute(value, attribute)
                if isinstance(value, jinja2.Undefined):
                    return rendered(context)
                out.append(str(value))
        except Exception:  # noqa: BLE001 - Jinja decides what it means
            return rendered(context)
        return _clean_subject(name, "".join(out))

    return subject


@lru_cache(maxsize=None)
def _plain_parts(env: jinja2.Environment, filename: str) -> tuple[tuple[str | None, tuple[str, ...] | None], ...] | None:
    """A template of literal text and plain variable outputs as (text, None) and (None, name
    path) pieces; None when it uses anything else (tags, filters, expressions)."""
    source, _, _ = env.loader.get_source(env, filename)
    try:
        body = env.parse(source).body
    except jinja2.TemplateSyntaxError:
        return None
    parts: list[tuple[str | None, tuple[str, ...] | None]] = []
    for node in body:
        if not isinstance(node, jinja2.nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, jinja2.nodes.TemplateData):
                parts.append((child.data, None))
                continue
            path: list[str] = []
            while isinstance(child, jinja2.nodes.Getattr):
                path.insert(0, child.attr)
                child = child.node
            if not (isinstance(child, jinja2.nodes.Name) and child.ctx == "load"):
                return None
            parts.append((None, (child.name, *path)))
    return tuple(parts)


@lru_cache(maxsize=None)
def _names(env: jinja2.Environment, filename: str) -> tuple[frozenset[str], frozenset[str]]:
    """(the variables a template file needs from its context, every name it reads — Jinja's
    globals such as ``range`` included). Parsing them was a tenth of a daily
    reminder run in a fresh process (B3), so the answer is kept beside the compiled templates,
    keyed by the file's source."""
    source, _, _ = env.loader.get_source(env, filename)
    path = None
    if isinstance(env.bytecode_cache, jinja2.FileSystemBytecodeCache):
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        path = Path(env.bytecode_cache.directory) / f"bg_ops-names-{digest}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return frozenset(data["undeclared"]), frozenset(data["loaded"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    ast = env.parse(source)
    undeclared = frozenset(jinja2.meta.find_undeclared_variables(ast))
    loaded = frozenset(n.name for n in ast.find_all(jinja2.nodes.Name) if n.ctx == "load")
    if path is not None:
        try:  # written whole or not at all: another process may be reading it
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps({"undeclared": sorted(undeclared), "loaded": sorted(loaded)}),
                               encoding="utf-8")
            os.replace(partial, path)
        except OSError:
            pass
    return undeclared, loaded


def _variables(env: jinja2.Environment, filename: str) -> frozenset[str]:
    """The variables a template file needs from its context (Jinja's globals not counted)."""
    return _names(env, filename)[0]


def _names_loaded(env: jinja2.Environment, filename: str) -> frozenset[str]:
    """Every name a template file reads, Jinja's globals (``range`` …) included."""
    return _names(env, filename)[1]


def _subject(text_env: jinja2.Environment, name: str, values: Mapping) -> str:
    return _clean_subject(name, _render(text_env, name, f"{name}.subject.txt", values))


def _clean_subject(name: str, text: str) -> str:
    subject = " ".join(text.split())
    if not subject:
        raise TemplateError(f"template {name!r} rendered an empty subject: fix {name}.subject.txt")
    return subject


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith((".", "_")):
        raise TemplateError(f"template name {name!r} is not valid: use one of {', '.join(template_names())}")


def _template(env: jinja2.Environment, name: str, filename: str) -> jinja2.Template:
    try:
        return env.get_template(filename)
    except jinja2.TemplateNotFound:
        raise TemplateError(
            f"template {name!r} has no {filename} in {TEMPLATES_DIR}: add the file or use one "
            f"of {', '.join(template_names())}"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise _template_error(name, filename, exc) from None


def _template_error(name: str, filename: str, exc: jinja2.UndefinedError | jinja2.TemplateSyntaxError) -> TemplateError:
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateError(f"template {name!r} ({filename}): {exc.message}: add it to the context")
    return TemplateError(f"template {name!r} ({filename}) line {exc.lineno}: {exc.message}")


def _render(env: jinja2.Environment, name: str, filename: str, values: Mapping) -> str:
    template = _template(env, name, filename)
    try:
        return template.render(values)
    except (jinja2.UndefinedError, jinja2.TemplateSyntaxError) as exc:
        raise _template_error(name, filename, exc) from None
