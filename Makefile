# The README's two commands. Each sets up .venv (scripts/setup.sh) and then runs its job.
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
