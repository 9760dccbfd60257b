"""Analysis of budgets: the critical-path sweep, the allocation search, reports and profiles."""
