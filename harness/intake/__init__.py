"""Intake: a class folder's submissions found, their submission.toml read, and what each student claimed.

- `submission`: discovery (class folders, LMS bulk-download names) and `read_submission` (submission.toml).
- `claims`: `Claims` from submission.toml, the checkpoint's stored metrics, training logs and reports.
- `logs`: the one reader of training logs (CSV, JSON, JSON Lines) and the one table of their column names.
"""
