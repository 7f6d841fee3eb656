"""Every reminder rule, one small module per business area. ``ALL_RULES`` is the registry
the daily job and the preview read; each rule's ``name`` is its op, template and switch."""

from bg_ops.defs.reminders.rules.approvals import approval_overdue, approval_stalled
from bg_ops.defs.reminders.rules.tasks import task_due

ALL_RULES = (approval_overdue, approval_stalled, task_due)
RULES_BY_NAME = {rule.name: rule for rule in ALL_RULES}
