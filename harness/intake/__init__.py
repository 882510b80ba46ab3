"""Intake: a class folder's submissions found, their submission.toml read, and what each student claimed."""
