"""Templated mail whose bodies the delivery job renders: ``enqueue_many(..., bodies_at_delivery=True)``,
the bulk path of the daily reminder run.

``enqueue_many`` renders and builds every message before it commits, about 0.45 ms a message.
A daily reminder run queues thousands of messages from a dozen templates, and that rendering
was most of the run (B3). On this path every message is still checked before anything is written —
addresses, priority, kind, send-after, that its context holds every variable its template
names, its subject (rendered here, so operators see it in the queue) and, for the first
message of each template, the whole mail — and is then stored as subject, template and
context, its bodies rendered and built at delivery exactly like a row the platform inserts
with plain SQL.
A value that only fails when rendered (a filter on a bad value) fails that one message at
delivery with a clear error (``PermanentBuildError``), never the batch.
"""

from __future__ import annotations


import jinja2

from bg_ops.defs.email.rendering import (
    TemplateError,
    _environments,
    _template_error,
    _variables,
    render,
    subject_renderer,
)

# Variables ``render`` supplies itself.
_PROVIDED = frozenset({"company", "subject"})


def required_variables(template: str) -> frozenset[str]:
    """Every top-level variable the three files of ``template`` use (the layout only uses
    what ``render`` provides); raise ``TemplateError`` when a file is missing or broken.
    Each file is parsed once per template environment (``rendering._variables``)."""
    html_env, text_env = _environments()
    names: set[str] = set()
    for env, filename in ((text_env, f"{template}.subject.txt"), (text_env, f"{template}.txt"),
                          (html_env, f"{template}.html")):
        try:
            names |= _variables(env, filename)
        except jinja2.TemplateNotFound:
            raise TemplateError(f"template {template!r} has no {filename}: add the file") from None
        except jinja2.TemplateSyntaxError as exc:
            raise _template_error(template, filename, exc) from None
    return frozenset(names - _PROVIDED)


class DeferredCheck:
    """Checks templated messages of one template and tenant whose bodies are rendered at delivery
    (``enqueue_many(..., bodies_at_delivery=True)`` and the daily reminder run).

    ``subject(context)`` checks that the context holds every variable the template names and
    returns the subject; the first message is rendered in full. A subject depends only on the
    few variables its line uses: messages that agree on them (a translation reminded to ten
    translators) share one rendering. Raises ``TemplateError``, from the first call on (a
    missing template too)."""

    def __init__(self, template: str, company: tuple[str, str]):
        self.template, self.company = template, company
        self._subjects: dict[tuple, str] = {}
        self._ready = False

    def _prepare(self) -> None:
        if not self.template:
            raise TemplateError("rendering at delivery needs a template: give one, or queue the bodies themselves")
        name, slug = self.company
        self._required = required_variables(self.template)
        self._render_subject = subject_renderer(self.template, company_name=name, company_slug=slug)
        text_env = _environments()[1]
        self._subject_vars = tuple(sorted(_variables(text_env, f"{self.template}.subject.txt") - _PROVIDED))
        self._ready = True

    def subject(self, context: dict) -> str:
        first = not self._ready
        if first:
            self._prepare()
        missing = self._required - context.keys()
        if missing:
            raise TemplateError(f"template {self.template!r}: {', '.join(sorted(missing))} undefined: "
                                "add it to the context")
        if first:  # the first message renders whole: its bodies are checked once
            name, slug = self.company
            subject = render(self.template, context, company_name=name, company_slug=slug).subject
        else:
            # The type too: 1 and True are equal keys but render differently.
            key: tuple | None = tuple([(type(v), v) for v in map(context.get, self._subject_vars)])
            try:
                subject = self._subjects.get(key)
            except TypeError:  # an unhashable value (a list): render it every time
                subject = key = None
            if subject is not None:
                return subject
            subject = self._render_subject(context)
        try:
            self._subjects[tuple([(type(v), v) for v in map(context.get, self._subject_vars)])] = subject
        except TypeError:
            pass
        return subject


def bodies_of(row, company: tuple[str, str]) -> tuple[str | None, str | None]:
    """The text and HTML bodies a queued row is (or will be) sent with: its own bodies, or —
    for a row rendered at delivery — its template rendered for the tenant ``company``
    (name, slug). Raises ``TemplateError`` as delivery would."""
    if row.body_text is not None or row.body_html is not None or not row.template:
        return row.body_text, row.body_html
    rendered = render(row.template, row.context or {}, company_name=company[0], company_slug=company[1])
    return rendered.text, rendered.html
