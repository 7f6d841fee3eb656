"""Operator alerts: failed and stuck runs mailed to the admins (O1, O9)."""
