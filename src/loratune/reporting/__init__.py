"""Reporting: report.md / report.html and the plots."""
