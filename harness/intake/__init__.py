"""Intake: a class folder's submissions found, their submission.toml read, and what each student claimed.

- `submission`: discovery (class folders, LMS bulk-download names) and `read_submission` (submission.toml).
- `claims`: `Claims` from submission.toml, the checkpoint's stored metrics, training logs and reports.
- `logs`: the one reader of training logs (CSV, JSON, JSON Lines) and the one table of their column names.
- `notebook`: Jupyter notebooks: claims from printed outputs and markdown tables; the model module of
  `[model] code = "x.ipynb:Name"` (imports, class/def, constants only), built in the sandbox.
- `deadlines`: when each submission was handed in (Gradescope, Canvas, a CSV) and its late penalty.
"""
