"""How results are shown: console tables and progress, and the ladder's report.json, report.md and report.html."""
