"""Two AutoAttack JSON files (`autoattack_ours.py`, `autoattack_torch.py`) side by
side: robust accuracy, points per second, and how many points one calls robust and
the other does not, for every model both attacked on the same number of points.

    python benchmarks/torch_bridge/compare.py ours.json torch.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    first, second = (json.loads(path.read_text()) for path in (args.first, args.second))
    print(f"| model | points | {first['suite']} AA | {second['suite']} AA | robust only in the first | "
          f"robust only in the second | {first['suite']} points/s | {second['suite']} points/s | speed ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, a in first["models"].items():
        b = second["models"].get(name)
        if b is None:
            continue
        n = min(a["n_examples"], b["n_examples"])
        ra, rb = a["robust"][:n], b["robust"][:n]
        print(f"| {name} | {n} | {100 * sum(ra) / n:.1f} | {100 * sum(rb) / n:.1f} | "
              f"{sum(x and not z for x, z in zip(ra, rb))} | {sum(z and not x for x, z in zip(ra, rb))} | "
              f"{a['points_per_second']:.3f} | {b['points_per_second']:.3f} | "
              f"{a['points_per_second'] / b['points_per_second']:.2f} |")


if __name__ == "__main__":
    main()
