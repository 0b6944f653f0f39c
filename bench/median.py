"""Median of several bench/peers.sh tables (one file per run).

Every cell and every per-run ratio is reduced to its median; the ratios
are still taken within each run, so their median is not the ratio of the
median cells. Each row also shows the per-run ratios.
"""
import re
import statistics
import sys


def parse(path):
    rows, clients, extra = {}, [], {}
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("workload"):
            clients = line.split()[2:-2]  # drop "workload unit" and "tessera/best peer"
            continue
        m = re.match(r"^(.+?)\s+(MiB/s|files/s)\s+(.*)$", line)
        if m and clients:
            cells = m.group(3).split()
            values = cells[: len(clients)]
            ratio = cells[len(clients)] if len(cells) > len(clients) else None
            rows[m.group(1)] = (m.group(2), values, ratio)
            continue
        m = re.match(r"^reference: tessera objbench GET 4 MiB x16: ([\d.]+) MiB/s; iperf3 loopback: ([\d.]+)", line)
        if m:
            extra["objbench GET MiB/s"] = float(m.group(1))
            extra["iperf3 MiB/s"] = float(m.group(2))
        m = re.match(r"^(\w+) client CPU .*: cold ([\d.]+) s, warm ([\d.]+) s", line)
        if m:
            extra[f"{m.group(1)} CPU s/GB cold"] = float(m.group(2))
            extra[f"{m.group(1)} CPU s/GB warm"] = float(m.group(3))
        m = re.match(r"^tessera (small write|small read) / juicefs: ([\d.]+)x", line)
        if m:
            extra[f"tessera {m.group(1)} / juicefs"] = float(m.group(2))
        m = re.match(r"^tessera (cold|warm) read / (objbench GET|its cache files|the local column).*: (\d+)%", line)
        if m:
            extra[f"tessera {m.group(1)} / {m.group(2)}"] = float(m.group(3))
    return clients, rows, extra


def main(paths):
    runs = [parse(p) for p in paths]
    clients = runs[0][0]
    med = statistics.median
    print(f"{'workload':<16}{'unit':>9}" + "".join(f"{c:>11}" for c in clients)
          + f"{'tessera/best peer':>19}  per run")
    for label, (unit, _, _) in runs[0][1].items():
        line = f"{label:<16}{unit:>9}"
        for i in range(len(clients)):
            vals = [float(r[1][label][1][i]) for r in runs if label in r[1] and r[1][label][1][i] != "-"]
            line += f"{med(vals):>11.1f}" if vals else f"{'-':>11}"
        ratios = [float(r[1][label][2].rstrip("x")) for r in runs if label in r[1] and r[1][label][2]]
        if ratios:
            line += f"{med(ratios):>18.2f}x  " + ", ".join(f"{x:.2f}" for x in ratios)
        print(line)
    keys = [k for k in runs[0][2]]
    for k in keys:
        vals = [r[2][k] for r in runs if k in r[2]]
        unit = "%" if k.startswith(("tessera cold /", "tessera warm /")) else ""
        print(f"{k}: median {med(vals):.2f}{unit} (runs: " + ", ".join(f"{v:.2f}" for v in vals) + ")")


if __name__ == "__main__":
    main(sys.argv[1:])
