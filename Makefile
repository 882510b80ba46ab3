# The README's two commands, and `make bench`. Each sets up .venv (scripts/setup.sh; the test extras only for
# `make test`) and then runs its job; tests/test_readme_commands.py reads these recipes.
.PHONY: demo test bench

demo:
	bash scripts/setup.sh
	.venv/bin/harness demo

test:
	bash scripts/setup.sh --test
	.venv/bin/python -m pytest -q

bench:
	bash scripts/setup.sh
	.venv/bin/python -m benchmarks
