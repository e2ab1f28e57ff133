"""Smoke test of the benchmark's parsing, ratio and report code on real fio runs.

A few sub-second fio jobs against a plain file stand in for every target
(the same file under the names ``raw``, ``qsd``, ``vvfs-linear`` and the two
mirrors); no mount, no peer, no full benchmark.
"""

from __future__ import annotations

import json
import shutil

import pytest

from bench import report
from bench.workloads import FIO_WORKLOADS, MiB, Result, check_data, fill_file, run_fio

pytestmark = pytest.mark.slow  # real fio runs

SIZE = 8 * MiB
NAMES = ("raw", "qsd", "vvfs-linear", "vvfs-mirror", "vvfs-mirror-nv")
WORKLOADS = [wl for wl in FIO_WORKLOADS if wl.name in ("seq-write", "rand-read-qd1")]


@pytest.fixture(scope="module")
def fio_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    if shutil.which("fio") is None:
        pytest.fail("fio is not installed: apt-get install fio (Debian package 'fio')")
    path = str(tmp_path_factory.mktemp("bench") / "plain.img")
    fill_file(path, SIZE)
    return path


@pytest.fixture(scope="module")
def results(fio_file: str, tmp_path_factory: pytest.TempPathFactory) -> list[Result]:
    workdir = str(tmp_path_factory.mktemp("fio"))
    return [run_fio(name, fio_file, wl, size=SIZE, runtime=0.3, ramp=0.0, workdir=workdir)
            for wl in WORKLOADS for name in NAMES]


@pytest.fixture(scope="module")
def doc(results: list[Result]) -> dict:
    meta = {"started": "2000-01-01 00:00:00", "mode": "smoke", "size_mib": 8,
            "runtime_s": 0.3, "ramp_s": 0.0, "tree_mib": 0}
    targets = [{"name": n, "title": n, "path": None, "cache": "O_DIRECT", "pids": [],
                "skipped": None, "data_check": "ok"} for n in NAMES]
    return report.document(meta, targets, results, {"volumes": 1, "devices": 1,
                                                     "open_s": 0.01})


def test_fio_results_are_parsed(results: list[Result]) -> None:
    for r in results:
        assert r.error is None, r.error
        assert r.mib_s and r.mib_s > 0
        assert r.iops and r.iops > 0
        assert r.lat_p50_us and r.lat_p99_us and r.lat_p99_us >= r.lat_p50_us


def test_ratio_to_self_is_one(results: list[Result]) -> None:
    rat = report.ratios(results)
    for wl in WORKLOADS:
        assert rat[("raw", wl.name)]["raw"]["throughput"] == pytest.approx(1.0)
        assert rat[("qsd", wl.name)]["qsd"]["p99"] == pytest.approx(1.0)


def test_markdown_has_a_row_per_target_and_workload(doc: dict) -> None:
    md = report.markdown(doc)
    for wl in WORKLOADS:
        for name in NAMES:
            assert f"| {wl.name} | {name} | " in md
    assert "## Issue 6 part 3 targets" in md
    assert "| linear >= qsd | rand-read-qd1 |" in md
    assert "| open_s | 0.010 |" in md


def test_json_round_trips_with_ratios(doc: dict, tmp_path) -> None:
    js, _ = report.write(doc, str(tmp_path))
    with open(js) as f:
        back = json.load(f)
    rows = {(r["target"], r["workload"]): r for r in back["results"]}
    assert set(rows) == {(n, wl.name) for n in NAMES for wl in WORKLOADS}
    row = rows[("vvfs-linear", "seq-write")]
    assert set(row["ratio"]) == {"raw", "qsd"}
    assert row["ratio"]["raw"]["throughput"] > 0
    assert any(g["goal"] == "linear >= qsd" and g["status"] in ("PASS", "MISS")
               for g in back["goals"])


def test_the_cost_of_read_verification_is_a_ratio_per_workload(doc: dict) -> None:
    rows = {r["workload"]: r for r in doc["verification"]}
    assert set(rows) == {wl.name for wl in WORKLOADS}
    assert rows["rand-read-qd1"]["throughput"] > 0
    md = report.markdown(doc)
    assert "## Read verification: vvfs-mirror ÷ vvfs-mirror-nv" in md
    assert "| rand-read-qd1 | " in md.split("## Read verification")[1]


def test_a_failed_run_is_a_row_with_an_error(doc: dict) -> None:
    bad = [Result("nbdfuse", "seq-write", error="fio failed: boom")]
    md = report.markdown({**doc, "targets": doc["targets"] + [
        {"name": "nbdfuse", "title": "n", "path": None, "cache": "", "pids": [],
         "skipped": None, "data_check": None}],
        "results": doc["results"] + [r.to_dict() for r in bad]})
    assert "| seq-write | nbdfuse | error: fio failed: boom |" in md


def test_data_check_passes_on_a_plain_file(fio_file: str) -> None:
    assert check_data(fio_file, SIZE) is None


def test_chart_renders(doc: dict, tmp_path) -> None:
    from bench import chart  # needs matplotlib: the test extra installs it

    out = chart.render(doc, str(tmp_path / "chart.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_every_target_has_cpu_microseconds_per_request(doc: dict) -> None:
    md = report.markdown(doc).split("## CPU µs per request")[1].split("\n## ")[0]
    for name in NAMES:
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} | "))
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        measured = [c for c, wl in zip(cells, FIO_WORKLOADS) if wl in WORKLOADS]
        assert measured and all(c != "—" and float(c.replace(",", "")) > 0 for c in measured)


def test_issue_12_targets_are_printed_with_their_direction(doc: dict) -> None:
    md = report.markdown(doc)
    assert "## Issue 12 targets" in md
    assert "| linear p50 <= 2 raw | rand-read-qd1 |" in md
    assert "| <= 2.00 |" in md


def test_a_latency_goal_passes_below_its_ceiling() -> None:
    assert report.Goal("p50", "w", 1.5, 2.0, higher=False).status == "PASS"
    assert report.Goal("p50", "w", 2.5, 2.0, higher=False).status == "MISS"


def test_the_python_engine_target_mounts_the_same_options_with_engine_python() -> None:
    from bench.peers import with_engine

    assert with_engine("backing=direct,engine=native", "python") == \
        "backing=direct,engine=python"
    assert with_engine("backing=direct", None) == "backing=direct"
