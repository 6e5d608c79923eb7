"""How every rung is measured the same way: quality with bootstrap intervals, speed, bias per slice and probe."""
