"""Reporting: results.json rendered as PDFs, figures and training curves, gradebook exports, and the
leaderboard page."""
