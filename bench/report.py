"""Ratios, the issue-6 and issue-12 targets, CPU per request, and the markdown and JSON reports of ``bench.run``.

Every ratio is *target value / reference value* for the same workload, the
reference being the raw backing file (``raw``) or qemu-storage-daemon
(``qsd``).  For throughput (MiB/s; IOPS gives the same ratio within one
workload, the block size being fixed) higher is better, 1.00 = as fast as
the reference; for latency lower is better, 1.00 = as quick as the
reference.

CPU per request (:func:`cpu_per_request`): for a server, the server
processes' user + system CPU time during the run over the requests it served;
for ``raw``, which has no server, fio's own user + system CPU per request.
fio's own CPU per request is kept for every target as well (with FUSE, the
kernel's share of a request is in fio's system time).

Issue 12's targets (:func:`goals12`): vvfs-linear (native engine) against
the better of qsd and nbdfuse, 4 KiB random reads against raw, QD1 latency,
the native path's CPU per 4 KiB request and mirrors against linear.

What verifying mirrored reads by the block checksums costs is the ratio of
``vvfs-mirror`` (verified) to ``vvfs-mirror-nv`` (the same kind of volume in
the same pool and run, its reads not verified): :func:`verification`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .workloads import ALL_WORKLOADS, EXT4_COPY, FIO_WORKLOADS, Result, Workload

REFERENCES = ("raw", "qsd")
#: the mirror whose reads are verified, and the one served without (VVFS_BENCH_NO_VERIFY)
VERIFIED, UNVERIFIED = "vvfs-mirror", "vvfs-mirror-nv"
METRICS = ("throughput", "p50", "p99")
_FIELD = {"throughput": "mib_s", "p50": "lat_p50_us", "p99": "lat_p99_us"}


def _index(results: Iterable[Result]) -> dict[tuple[str, str], Result]:
    return {(r.target, r.workload): r for r in results if r.error is None}


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratios(results: Sequence[Result]) -> dict[tuple[str, str], dict[str, dict[str, float | None]]]:
    """(target, workload) -> reference -> metric -> ratio (None when not measurable)."""
    idx = _index(results)
    out: dict[tuple[str, str], dict[str, dict[str, float | None]]] = {}
    for (target, wl), r in idx.items():
        per: dict[str, dict[str, float | None]] = {}
        for ref in REFERENCES:
            base = idx.get((ref, wl))
            per[ref] = {m: _div(getattr(r, _FIELD[m]), getattr(base, _FIELD[m], None))
                        for m in METRICS}
        out[(target, wl)] = per
    return out


@dataclass
class Goal:
    """One target for one workload: *ratio* (or value) against *need*.

    ``higher`` says which way passes: ratio >= need (throughput) or, when
    False, ratio <= need (latency, CPU).
    """

    goal: str
    workload: str
    ratio: float | None
    need: float
    higher: bool = True

    @property
    def status(self) -> str:
        if self.ratio is None:
            return "n/a"
        ok = self.ratio >= self.need if self.higher else self.ratio <= self.need
        return "PASS" if ok else "MISS"

    def to_dict(self) -> dict:
        return {"goal": self.goal, "workload": self.workload, "ratio": self.ratio,
                "need": self.need, "higher": self.higher, "status": self.status}


def goals(results: Sequence[Result]) -> list[Goal]:
    """Issue 6 part 3: linear >= qsd everywhere; mirrored writes >= half of linear;
    stripe over two backing files >= linear."""
    idx = _index(results)

    def thr(target: str, wl: Workload) -> float | None:
        r = idx.get((target, wl.name))
        return r.mib_s if r else None

    out = []
    for wl in ALL_WORKLOADS:
        out.append(Goal("linear >= qsd", wl.name,
                        _div(thr("vvfs-linear", wl), thr("qsd", wl)), 1.0))
    for wl in ALL_WORKLOADS:
        if wl.is_write:
            out.append(Goal("mirror writes >= 1/2 linear", wl.name,
                            _div(thr("vvfs-mirror", wl), thr("vvfs-linear", wl)), 0.5))
    for wl in ALL_WORKLOADS:
        out.append(Goal("stripe >= linear", wl.name,
                        _div(thr("vvfs-stripe", wl), thr("vvfs-linear", wl)), 1.0))
    for wl in ALL_WORKLOADS:  # the performance issue's later target
        if wl.name == "rand-read-qd16":
            out.append(Goal("mirror reads >= linear (later)", wl.name,
                            _div(thr("vvfs-mirror", wl), thr("vvfs-linear", wl)), 1.0))
    return out


#: the peers vvfs-linear is held against in issue 12 (the better of them per workload)
PEERS = ("qsd", "nbdfuse")
#: issue 12's ceiling of CPU per 4 KiB request on the native path, µs
NATIVE_CPU_US = 20.0


def goals12(results: Sequence[Result]) -> list[Goal]:
    """Issue 12's targets, each a ratio of this run (the CPU goal: µs per request)."""
    idx = _index(results)

    def val(target: str, wl: Workload, fld: str = "mib_s") -> float | None:
        r = idx.get((target, wl.name))
        return getattr(r, fld) if r else None

    out = []
    for wl in ALL_WORKLOADS:
        best = max((v for p in PEERS if (v := val(p, wl)) is not None), default=None)
        out.append(Goal("linear >= best of qsd, nbdfuse", wl.name,
                        _div(val("vvfs-linear", wl), best), 1.0))
    by_name = {wl.name: wl for wl in ALL_WORKLOADS}
    if "rand-read-qd16" in by_name:
        wl = by_name["rand-read-qd16"]
        out.append(Goal("linear >= 0.6 raw", wl.name, _div(val("vvfs-linear", wl),
                                                            val("raw", wl)), 0.6))
    for name in ("rand-read-qd1", "rand-write-qd1"):
        if name in by_name:
            wl = by_name[name]
            out.append(Goal("linear p50 <= 2 raw", name,
                            _div(val("vvfs-linear", wl, "lat_p50_us"),
                                 val("raw", wl, "lat_p50_us")), 2.0, higher=False))
    for wl in FIO_WORKLOADS:
        r = idx.get(("vvfs-linear", wl.name))
        if wl.bs == 4096:
            out.append(Goal("linear CPU µs per 4K request <= 20", wl.name,
                            cpu_per_request(r) if r else None, NATIVE_CPU_US, higher=False))
    for wl in ALL_WORKLOADS:
        if wl.is_write:
            out.append(Goal("mirror writes >= 0.5 linear", wl.name,
                            _div(val("vvfs-mirror", wl), val("vvfs-linear", wl)), 0.5))
    if "rand-read-qd16" in by_name:
        wl = by_name["rand-read-qd16"]
        out.append(Goal("mirror reads >= linear", wl.name,
                        _div(val("vvfs-mirror", wl), val("vvfs-linear", wl)), 1.0))
    return out


def verification(results: Sequence[Result]) -> list[dict]:
    """What verifying mirrored reads costs, per workload measured on both mirrors.

    Rows ``{"workload", "throughput", "p50", "p99", "cpu_us", "cpu_us_nv"}``:
    ``vvfs-mirror`` (reads verified) ÷ ``vvfs-mirror-nv`` (not verified) --
    throughput below 1.00 and latency above 1.00 are the cost -- and the
    node's CPU time per request on each (µs; moves less with the machine's
    load than throughput does).
    """
    idx = _index(results)
    out = []
    for wl in ALL_WORKLOADS:
        a, b = idx.get((VERIFIED, wl.name)), idx.get((UNVERIFIED, wl.name))
        if a is not None and b is not None:
            out.append({"workload": wl.name} | {
                m: _div(getattr(a, _FIELD[m]), getattr(b, _FIELD[m])) for m in METRICS}
                | {"cpu_us": cpu_per_request(a), "cpu_us_nv": cpu_per_request(b)})
    return out


def cpu_per_request(r: Result) -> float | None:
    """CPU µs per request of fio run *r*: its server's, or fio's own when it has none.

    The server's is its CPU time over iops x (ramp + runtime) (an estimate: the
    ramp's rate is taken to be the run's); a run recorded before that was kept
    falls back to the CPU share over the whole wall time.
    """
    if not r.iops:
        return None
    if r.extra.get("server_cpu_us") is not None:
        return float(r.extra["server_cpu_us"])
    if r.extra.get("server_cpu_pct") is not None:
        return float(r.extra["server_cpu_pct"]) / 100 / r.iops * 1e6
    return fio_cpu_per_request(r)


def fio_cpu_per_request(r: Result) -> float | None:
    """fio's own user + system CPU µs per request of run *r*."""
    cpu = r.extra.get("fio_cpu_pct")
    if cpu is None or not r.iops:
        return None
    return float(cpu) / 100 / r.iops * 1e6


# ---------------------------------------------------------------- formatting


def _num(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _load(v: Sequence[float] | None) -> str:
    return "?" if not v else " ".join(f"{x:.2f}" for x in v)


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def fio_table(results: Sequence[Result], targets: Sequence[str]) -> list[str]:
    """The main table: one row per fio workload and target."""
    rat = ratios(results)
    idx = {(r.target, r.workload): r for r in results}
    head = ("| workload | target | MiB/s | IOPS | lat p50 µs | lat p99 µs "
            "| thr ÷raw | thr ÷qsd | p50 ÷raw | p50 ÷qsd | p99 ÷raw | p99 ÷qsd |")
    lines = [head, "|" + "---|" * 12]
    for wl in FIO_WORKLOADS:
        for t in targets:
            r = idx.get((t, wl.name))
            if r is None:
                continue
            if r.error:
                lines.append(f"| {wl.name} | {t} | error: {r.error} |" + " |" * 9)
                continue
            q = rat[(t, wl.name)]
            lines.append(
                f"| {wl.name} | {t} | {_num(r.mib_s)} | {_num(r.iops, 0)} "
                f"| {_num(r.lat_p50_us)} | {_num(r.lat_p99_us)} "
                f"| {_ratio(q['raw']['throughput'])} | {_ratio(q['qsd']['throughput'])} "
                f"| {_ratio(q['raw']['p50'])} | {_ratio(q['qsd']['p50'])} "
                f"| {_ratio(q['raw']['p99'])} | {_ratio(q['qsd']['p99'])} |")
    return lines


def ext4_table(results: Sequence[Result], targets: Sequence[str]) -> list[str]:
    rat = ratios(results)
    idx = {(r.target, r.workload): r for r in results}
    lines = [("| target | copy + sync s | of which sync s | MiB/s | thr ÷raw | thr ÷qsd "
             "| mkfs s | loop dio |"), "|---|---|---|---|---|---|---|---|"]
    for t in targets:
        r = idx.get((t, EXT4_COPY.name))
        if r is None:
            continue
        if r.error:
            lines.append(f"| {t} | error: {r.error} | | | | | | |")
            continue
        q = rat[(t, EXT4_COPY.name)]
        dio = r.extra.get("loop_dio")
        lines.append(f"| {t} | {_num(r.seconds, 2)} | {_num(r.extra.get('sync_s'), 2)} "
                     f"| {_num(r.mib_s)} "
                     f"| {_ratio(q['raw']['throughput'])} | {_ratio(q['qsd']['throughput'])} "
                     f"| {_num(r.extra.get('mkfs_s'), 2)} "
                     f"| {'on' if dio else 'OFF' if dio is not None else '?'} |")
    return lines


def summary_table(results: Sequence[Result], targets: Sequence[str], ref: str) -> list[str]:
    """Throughput ÷ *ref*: targets as rows, workloads as columns."""
    rat = ratios(results)
    names = [wl.name for wl in ALL_WORKLOADS]
    lines = ["| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t in targets:
        cells = [_ratio(rat.get((t, n), {}).get(ref, {}).get("throughput")) for n in names]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def cpu_table(results: Sequence[Result], targets: Sequence[str]) -> list[str]:
    """Server CPU use (percent of one core) per run, where recorded."""
    idx = {(r.target, r.workload): r for r in results}
    names = [wl.name for wl in FIO_WORKLOADS]
    lines = ["| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    any_row = False
    for t in targets:
        cells = []
        for n in names:
            r = idx.get((t, n))
            cpu = r.extra.get("server_cpu_pct") if r else None
            cells.append("—" if cpu is None else f"{cpu:.0f}%")
        if any(c != "—" for c in cells):
            any_row = True
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines if any_row else []


def cpu_us_table(results: Sequence[Result], targets: Sequence[str],
                 per_request=cpu_per_request) -> list[str]:
    """CPU µs per request, targets as rows, fio workloads as columns."""
    idx = {(r.target, r.workload): r for r in results if r.error is None}
    names = [wl.name for wl in FIO_WORKLOADS]
    lines = ["| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t in targets:
        cells = []
        for n in names:
            r = idx.get((t, n))
            cells.append(_num(per_request(r) if r else None))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def served_table(results: Sequence[Result], targets: Sequence[str]) -> list[str]:
    """Per vvfs run, the share of its requests the native driver served."""
    idx = {(r.target, r.workload): r for r in results if r.error is None}
    names = [wl.name for wl in FIO_WORKLOADS]
    lines = ["| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    any_row = False
    for t in targets:
        cells = []
        for n in names:
            r = idx.get((t, n))
            nat = r.extra.get("native_requests") if r else None
            py = r.extra.get("python_requests", 0) if r else 0
            cells.append("—" if nat is None or nat + py == 0
                         else f"{100.0 * nat / (nat + py):.0f}%")
        if any(c != "—" for c in cells):
            any_row = True
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines if any_row else []


def goals_table(gs: Sequence[Goal]) -> list[str]:
    lines = ["| goal | workload | ratio | need | status |", "|---|---|---|---|---|"]
    for g in gs:
        ratio = "—" if g.ratio is None else f"{g.ratio:.3f}"  # 0.997 is a miss, say so
        need = f"{'>=' if g.higher else '<='} {g.need:.2f}"
        lines.append(f"| {g.goal} | {g.workload} | {ratio} | {need} "
                     f"| {g.status} |")
    return lines


def verification_table(rows: Sequence[dict]) -> list[str]:
    lines = [("| workload | thr verified ÷ not | p50 verified ÷ not | p99 verified ÷ not "
              "| node CPU µs/req verified | not verified |"), "|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {_ratio(r['throughput'])} | {_ratio(r['p50'])} "
              f"| {_ratio(r['p99'])} | {_num(r.get('cpu_us'))} | {_num(r.get('cpu_us_nv'))} |"
              for r in rows]
    return lines


def metadata_table(meta: dict | None) -> list[str]:
    if not meta:
        return ["(metadata benchmark not run)"]
    if meta.get("error"):
        return [f"metadata benchmark failed: {meta['error']}"]
    lines = [(f"| metadata, {meta.get('volumes')} volumes on {meta.get('devices')} devices "
             "| value |"), "|---|---|"]
    for k, v in meta.items():
        if k in ("volumes", "devices"):
            continue
        if isinstance(v, float):
            v = f"{v:.3f}"
        lines.append(f"| {k} | {v} |")
    return lines


def markdown(doc: dict) -> str:
    """results.md from the results document (see :func:`document`)."""
    meta = doc["meta"]
    targets = [t["name"] for t in doc["targets"] if not t["skipped"]]
    results = [Result(**{k: v for k, v in r.items() if k != "ratio"}) for r in doc["results"]]
    out = [f"# vvfs benchmark — {meta['started']}", ""]
    out += [(f"- mode: **{meta['mode']}**; fio runtime {meta['runtime_s']} s after "
            f"{meta['ramp_s']} s ramp; file/volume size {meta['size_mib']} MiB; "
            f"ext4 tree {meta['tree_mib']} MiB"),
            (f"- host: {meta.get('host', '?')}; {meta.get('cpus', '?')} CPUs; "
            f"kernel {meta.get('kernel', '?')}; load average at start / end "
            f"{_load(meta.get('loadavg_start'))} / {_load(meta.get('loadavg_end'))}; "
            f"median of {meta.get('repeat', 1)} run(s) per cell; took {meta.get('elapsed_s', '?')} s"),
            f"- storage: {meta.get('storage', '?')}",
            "- tools: " + "; ".join(v if v.lower().startswith(k) else f"{k} {v}"
                                    for k, v in meta.get("versions", {}).items()),
            ""]
    out += ["## Targets", "",
            "| target | what | cache configuration | data check |", "|---|---|---|---|"]
    for t in doc["targets"]:
        cache = t["cache"] if not t["skipped"] else f"**SKIPPED: {t['skipped']}**"
        check = t.get("data_check") or "—"
        if check != "ok" and check != "—":
            check = f"**{check}**"
        out.append(f"| {t['name']} | {t['title']} | {cache} | {check} |")
    failed = [t["name"] for t in doc["targets"]
              if (t.get("data_check") or "ok").startswith("FAILED")]
    if failed:
        out += ["", (f"**Data check failed for {', '.join(failed)}**: blocks written "
                "concurrently did not read back as written, so their write numbers come "
                "from a data path that loses or misplaces data (see bench/README.md).")]
    out += ["", "## fio (direct I/O, libaio)", "",
            ("Ratios are target ÷ reference: throughput above 1.00 is faster than the "
            "reference, latency below 1.00 is quicker."), ""]
    out += fio_table(results, targets)
    ext4 = ext4_table(results, targets)
    if len(ext4) > 2:
        out += ["", "## ext4 on a loop device: copy a tree and sync", ""]
        out += ext4
    out += ["", "## Throughput ÷ qemu-storage-daemon", ""]
    out += summary_table(results, targets, "qsd")
    out += ["", "## Throughput ÷ raw file", ""]
    out += summary_table(results, targets, "raw")
    cpu = cpu_table(results, targets)
    if cpu:
        out += ["", "## Server CPU (percent of one core, user + system, during the run)", ""]
        out += cpu
    out += ["", "## CPU µs per request", "",
            ("The server's user + system CPU per request (its processes: the vvfs node with "
             "its driver threads, qemu-storage-daemon, nbdfuse + nbdkit); raw has no server: "
             "fio's own CPU per request."), ""]
    out += cpu_us_table(results, targets)
    out += ["", "## fio's own CPU µs per request (user + system: the FUSE kernel side too)", ""]
    out += cpu_us_table(results, targets, fio_cpu_per_request)
    served = served_table(results, targets)
    if served:
        out += ["", "## Requests the native driver served (share of the run's reads and writes)",
                ""]
        out += served
    if doc.get("verification"):
        out += ["", "## Read verification: vvfs-mirror ÷ vvfs-mirror-nv", "",
                ("The same mirrored volume layout in the same pool and run, reads verified by "
                 "the block checksums and not: throughput below 1.00 and latency above 1.00 "
                 "are what verification costs."), ""]
        out += verification_table(doc["verification"])
    if doc.get("goals12"):
        out += ["", "## Issue 12 targets", "",
                ("Ratios of this run (vvfs-linear on the native engine); the CPU goal is "
                 "µs per request, not a ratio."), ""]
        out += goals_table([_goal(g) for g in doc["goals12"]])
    out += ["", "## Issue 6 part 3 targets", ""]
    out += goals_table([_goal(g) for g in doc["goals"]])
    out += ["", "## Metadata", ""]
    out += metadata_table(doc.get("metadata"))
    return "\n".join(out) + "\n"


def _goal(g: dict) -> Goal:
    return Goal(g["goal"], g["workload"], g["ratio"], g["need"], g.get("higher", True))


def document(meta: dict, targets: Sequence[dict], results: Sequence[Result],
             metadata: dict | None) -> dict:
    """The results.json document: meta, targets, results with ratios, goals, metadata."""
    rat = ratios(results)
    rows = []
    for r in results:
        row = r.to_dict()
        row["ratio"] = rat.get((r.target, r.workload))
        rows.append(row)
    return {"meta": meta, "targets": list(targets), "results": rows,
            "goals": [g.to_dict() for g in goals(results)],
            "goals12": [g.to_dict() for g in goals12(results)],
            "verification": verification(results), "metadata": metadata}


def write(doc: dict, out_dir: str) -> tuple[str, str]:
    """Write results.json and results.md into *out_dir*; return their paths."""
    js = os.path.join(out_dir, "results.json")
    md = os.path.join(out_dir, "results.md")
    with open(js, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    with open(md, "w") as f:
        f.write(markdown(doc))
    return js, md
