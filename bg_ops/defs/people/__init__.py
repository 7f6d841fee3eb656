"""People: PTO accruals by tenure tier (B3) and tenure promotions (B4)."""
