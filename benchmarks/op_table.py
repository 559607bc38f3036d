"""Self-time per TensorFlow op type from a profiler trace (`profile_step.py`),
through xprof's framework-op-stats converter. Needs `pip install xprof`, in an
environment of its own (it wants a newer protobuf than TensorFlow):

    /tmp/xp/bin/python benchmarks/op_table.py /tmp/prof [--top 20]
"""

from __future__ import annotations

import argparse
import glob
import json


def op_type_times(logdir: str) -> dict[str, tuple[int, float]]:
    """op type -> (calls, self-time in ms) over the trace in ``logdir``."""
    from xprof.convert import raw_to_tool_data

    paths = glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb")
    if not paths:
        raise SystemExit(f"no profiler trace under {logdir}; run profile_step.py first")
    data, _ = raw_to_tool_data.xspace_to_tool_data(paths[-1:], "framework_op_stats", {})
    table = json.loads(data.decode() if isinstance(data, bytes) else data)
    table = table[0] if isinstance(table, list) else table
    columns = [c["label"] if isinstance(c, dict) else c for c in table["cols"]]
    kind, calls, self_time = (columns.index(c) for c in ("Operation Type", "#Occurrences", "Total self-time (us)"))
    totals: dict[str, tuple[int, float]] = {}
    for row in table["rows"]:
        cells = [c.get("v") if isinstance(c, dict) else c for c in row["c"]]
        n, t = totals.get(cells[kind], (0, 0.0))
        totals[cells[kind]] = (n + int(cells[calls] or 0), t + float(cells[self_time] or 0) / 1e3)
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    totals = op_type_times(args.logdir)
    whole = sum(t for _, t in totals.values())
    print("| op type | calls | self-time ms | share |\n| --- | --- | --- | --- |")
    for name, (n, t) in sorted(totals.items(), key=lambda item: -item[1][1])[:args.top]:
        print(f"| {name} | {n} | {t:.0f} | {100 * t / whole:.1f}% |")
    print(f"| all | | {whole:.0f} | |")


if __name__ == "__main__":
    main()
