"""Protocol benchmarks: run a protocol's whole grid (a table of the paper) through the tcclip CLI, then collect it.

    python benchmarks/protocols.py few_shot [tcclip sweep options]     # what `make benchmark-few-shot` runs
    python benchmarks/protocols.py all --smoke                         # every protocol, synthetic data, CPU

PROTOCOL is zero_shot, few_shot, base2novel, fully_supervised (hyphens work too) or all. Every other option is
`tcclip sweep`'s (`tcclip sweep --help`): --smoke, --datasets, --shots, --seeds, --variants, --only, --ckpt-dir,
--gpus, --slurm, ... One run directory per cell under runs/ (runs/smoke/ in smoke mode); a cell with a results file
is skipped and one whose run died resumes from its last checkpoint. Tables, CSV and plots go to results/.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from tcclip.cli import main as tcclip_main
from tcclip.experiments.protocols import GRIDS


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    protocol = argv[0].replace("-", "_")
    if protocol != "all" and protocol not in GRIDS:
        print(f"benchmarks/protocols.py: unknown protocol {argv[0]!r}; use {', '.join(GRIDS)} or all", file=sys.stderr)
        return 2
    start = time.perf_counter()
    # Through the CLI's entry point, so that a bad selection is reported as `tcclip sweep` reports it (exit 2).
    status = tcclip_main(["sweep", "--grid", protocol, *argv[1:]])
    print(f"benchmarks/protocols.py {protocol}: finished in {time.perf_counter() - start:.0f} s (exit status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
