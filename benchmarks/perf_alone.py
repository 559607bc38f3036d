"""Which code runs while the other cores sit idle: reads `perf script` output of
a system-wide `perf record -e cpu-clock` and, in time slots of one sampling
period, counts the slots where every core was busy, where one ran alone, and
what that one ran (symbol, or shared object for JIT code without symbols).

    python benchmarks/step_times.py ... &          # or any step loop, warmed up
    perf record -a -F 2000 -e cpu-clock -o perf.data -- sleep 8
    perf script -i perf.data -F tid,cpu,time,ip,sym,dso > perf.txt
    python benchmarks/perf_alone.py perf.txt --hz 2000
"""

from __future__ import annotations

import argparse
import collections
import re

SAMPLE = re.compile(r"\s*(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+\S+\s+(.*)\((.*)\)\s*$")


def slots(lines, period: float) -> dict:
    """{slot: {cpu: (tid, what)}}, tid 0 being the idle task."""
    table = collections.defaultdict(dict)
    for line in lines:
        match = SAMPLE.match(line)
        if match:
            tid, cpu, when, symbol, dso = match.groups()
            symbol = symbol.strip()
            what = symbol if symbol and symbol != "[unknown]" else dso.rsplit("/", 1)[-1]
            table[int(float(when) / period)][int(cpu)] = (int(tid), what[:120])
    return table


def summary(table: dict, cpus: int) -> dict:
    counted = [cores for cores in table.values() if len(cores) == cpus]
    busy = [[what for tid, what in cores.values() if tid != 0] for cores in counted]
    alone = collections.Counter(whats[0] for whats in busy if len(whats) == 1)
    n = max(len(counted), 1)
    return {"slots": len(counted), "all_busy": sum(len(w) == cpus for w in busy) / n,
            "one_alone": sum(len(w) == 1 for w in busy) / n,
            "alone_running": {what: count / n for what, count in alone.most_common(15)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("perf_script_output")
    parser.add_argument("--hz", type=float, default=2000, help="perf record's -F")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    with open(args.perf_script_output) as handle:
        report = summary(slots(handle, 1.0 / args.hz), args.cpus)
    print(f"{report['slots']} slots: all cores busy {report['all_busy']:.3f}, one alone {report['one_alone']:.3f}")
    for what, share in report["alone_running"].items():
        print(f"  {share:.4f}  {what}")


if __name__ == "__main__":
    main()
