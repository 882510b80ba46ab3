"""Students' own model code, run only in a sandboxed child process."""
