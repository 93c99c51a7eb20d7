"""Statistics and Markdown for compare.py: medians, spreads, ratios, machine header."""

import os
import platform
import shlex
import statistics
import sys
from datetime import datetime, timezone

REFERENCES = ("asyncio", "uvloop")
FAST_PEERS = ("uvloop", "rloop")


def summarize(runs, workloads, labels):
    """Per (workload, label): the successful values and their median, min and max."""
    table = {}
    for workload in workloads:
        for label in labels:
            mine = [r for r in runs if r["workload"] == workload and r["label"] == label]
            values = [r["value"] for r in mine if r.get("ok")]
            row = {"values": values, "failed": len(mine) - len(values),
                   "unit": next((r["unit"] for r in mine if r.get("unit")), "")}
            if values:
                row.update(median=statistics.median(values), min=min(values), max=max(values))
            table[workload, label] = row
    return table


def human(value):
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def ratio(row, ref):
    """``row``'s median over ``ref``'s; ≈ when their min–max ranges overlap."""
    if not row or not ref or "median" not in row or "median" not in ref:
        return "–"
    if row is ref:
        return "1"
    overlap = row["min"] <= ref["max"] and ref["min"] <= row["max"]
    return f"{row['median'] / ref['median']:.2f}{' ≈' if overlap else ''}"


def table_markdown(table, workloads, labels, reps):
    lines = [
        "| workload | loop | median | min–max | spread | × asyncio | × uvloop "
        "| × best of uvloop/rloop |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for workload in workloads:
        rows = {label: table[workload, label] for label in labels}
        peers = [p for p in FAST_PEERS if "median" in rows.get(p, {})]
        best = max(peers, key=lambda p: rows[p]["median"]) if peers else None
        unit = next((row["unit"] for row in rows.values() if row["unit"]), "")
        for label, row in rows.items():
            name = f"{workload} ({unit})" if unit else workload
            if "median" not in row:
                lines.append(f"| {name} | {label} | FAILED | | | | | |")
                continue
            spread = f"{(row['max'] - row['min']) / row['median'] * 100:.1f}%" \
                if len(row["values"]) > 1 else "–"
            failed = f" ({row['failed']} failed)" if row["failed"] else ""
            best_cell = f"{ratio(row, rows[best])} ({best})" if best else "–"
            lines.append(
                f"| {name} | {label} | {human(row['median'])}{failed} "
                f"| {human(row['min'])}–{human(row['max'])} | {spread} "
                f"| {ratio(row, rows.get('asyncio'))} | {ratio(row, rows.get('uvloop'))} "
                f"| {best_cell} |"
            )
    lines += [
        "",
        f"Each cell is over {reps} run(s), each in a fresh process, loops interleaved. "
        "Higher is better; a ratio is this loop's median over the other's "
        "(2.00 = twice as fast). ≈ marks ratios whose min–max ranges overlap: "
        "not distinguishable from noise in this run. Spread = (max − min) / median.",
    ]
    return "\n".join(lines)


def problems_markdown(probes, runs):
    lines = []
    for spec, probe in probes.items():
        if not probe.get("available"):
            lines.append(f"- `{spec}` unavailable: {probe.get('error', 'unknown error')}")
    for run in runs:
        if not run.get("ok"):
            lines.append(f"- `{run['loop']}` {run['workload']} rep {run['rep']} FAILED: "
                         f"{run.get('error', 'no output')}")
    return "\n".join(lines)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def os_name():
    try:
        with open("/etc/os-release") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        return f"{fields.get('PRETTY_NAME', '').strip(chr(34))}, Linux {platform.release()}"
    except OSError:
        return platform.platform()


def command_line():
    """The command as typed, with the interpreter reduced to its name."""
    return shlex.join([os.path.basename(sys.orig_argv[0]), *sys.orig_argv[1:]])


def machine():
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "os": os_name(),
        "command": command_line(),
        "loadavg_start": os.getloadavg()[0],
    }


def header_markdown(meta, probes, python):
    loops = ", ".join(
        f"{spec} {p['version']}" if p.get("available") else f"{spec} (unavailable)"
        for spec, p in probes.items()
    )
    return "\n".join([
        "# Event loop comparison",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['cpu']}, {meta['cores']} cores; load average "
        f"{meta['loadavg_start']:.2f} at start, {meta.get('loadavg_end', 0):.2f} at end",
        f"- OS: {meta['os']}",
        f"- Python: {python}",
        f"- Loops: {loops}",
        f"- Command: `{meta['command']}`",
    ])
