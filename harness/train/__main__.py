"""`python -m harness.train gpt|mlm ...`: the entry point torchrun starts once per process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.families import FAMILIES
from harness.metrics.common import plain
from harness.train.run import dist_env, train_reference


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.train", description="Train a reference model (torchrun-able).")
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("--config", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path)
    p.add_argument("--course", type=Path)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--no-resume", action="store_true")
    a = p.parse_args(argv)
    try:
        r = train_reference(a.family, a.config, a.overrides, a.out, max_steps=a.max_steps, max_tokens=a.max_tokens,
                            max_minutes=a.max_minutes, resume=not a.no_resume, course=a.course)
    except HarnessError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    if dist_env()[0] == 0:
        print(json.dumps(plain(r.to_dict()), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
