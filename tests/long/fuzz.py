"""The long, coverage-guided run of the hostile-input suite (``make fuzz``): atheris (libFuzzer)
feeds every decoder in ``tests/fuzz_targets.py`` and keeps the inputs that reach new code.
Any exception other than the exchange's own errors is a crash: atheris stops and writes the
input to ``crash-*``.

    python -m tests.long.fuzz [--runs N] [--target NAME]   (default 1,000,000 runs per target)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _one(target: str, runs: int) -> None:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    # nothing of the exchange is imported yet in this process: all of it gets instrumented
    with atheris.instrument_imports(include=["exchange", "tests", "msgspec"]):
        from tests.fuzz_targets import run

    def one_input(data: bytes) -> None:
        run(target, data)

    from tests.fuzz_targets import SEEDS

    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    for i, seed in enumerate(SEEDS[target]):  # valid inputs to start from
        (corpus / f"seed{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=4096", "-print_final_stats=1",
                   str(corpus)], one_input)
    atheris.Fuzz()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.long.fuzz")
    p.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    p.add_argument("--target", help="one decoder (default: all)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        _one(a.one, a.runs)
        return 0
    from tests.fuzz_targets import TARGETS
    total, failed = 0, []
    for target in [a.target] if a.target else sorted(TARGETS):
        t = time.monotonic()
        # one process per target: libFuzzer runs one callback per process
        rc = subprocess.call([sys.executable, "-m", "tests.long.fuzz", "--one", target,
                              "--runs", str(a.runs)])
        took = time.monotonic() - t
        print(f"fuzz {target}: {a.runs:,} inputs in {took:.0f} s, "
              f"{'ok' if rc == 0 else f'CRASH (exit {rc})'}", flush=True)
        total += a.runs
        if rc != 0:
            failed.append(target)
    print(f"fuzz: {total:,} inputs over {len(TARGETS) if not a.target else 1} decoders; "
          f"crashes: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
