"""Every reminder rule, one small module per business area. ``ALL_RULES`` is the registry
the daily job and the preview read; each rule's ``name`` is its op, template and switch."""

from bg_ops.defs.reminders.rules.approvals import approval_overdue, approval_stalled
from bg_ops.defs.reminders.rules.core_requests import core_request_not_accepted, core_request_ready
from bg_ops.defs.reminders.rules.design_queue import design_queue
from bg_ops.defs.reminders.rules.documents import document_expiry
from bg_ops.defs.reminders.rules.finance import invoice_overdue, po_expiring
from bg_ops.defs.reminders.rules.people import birthdays, work_anniversaries
from bg_ops.defs.reminders.rules.tasks import task_due
from bg_ops.defs.reminders.rules.translations import translation_due

ALL_RULES = (approval_overdue, approval_stalled, task_due, birthdays, work_anniversaries, document_expiry,
             translation_due, core_request_not_accepted, core_request_ready, design_queue, po_expiring,
             invoice_overdue)
RULES_BY_NAME = {rule.name: rule for rule in ALL_RULES}
