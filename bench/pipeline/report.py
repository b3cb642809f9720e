"""The printout: one section per part that ran, then the targets with PASS/FAIL."""

from __future__ import annotations

import json
import statistics
from typing import Any

TARGETS = {"noop_s": 1.5, "full_s": 90.0, "overhead_s": 1.5}
LINE = "-" * 100

Check = tuple[str, float | None, float]


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "PASS" if value <= target else "FAIL"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_header(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(
        f"\n{LINE}\nPipeline benchmark  {res['started']}  ({m['cpus']} CPUs, {m['memory_gb']} GB,"
        f" {m['cpu_model']}; load before {m['load_before']})"
    )
    print(f"project {res['project']['head'][:10]}{' (dirty tree)' if res['project']['dirty'] else ''}")
    if res.get("extra_env"):
        print(f"extra environment of the measured commands: {res['extra_env']}")
    print(LINE)


def print_full(full: dict[str, Any]) -> list[Check]:
    walls = ", ".join(f"{r['wall_s']:.1f}" for r in full["runs"])
    loads = ", ".join(f"{r['other_load_cores']:.2f}" for r in full["runs"])
    print(
        f"FULL `dvc repro -f`, default data, {len(full['runs'])} run(s): {walls} s"
        f"  (other processes' load meanwhile: {loads} cores)"
    )
    if "stages" in full:
        print(f"  {'stage':<14}{'papermill s':>12}{'process s':>11}{'peak RSS MB':>13}")
        for s, v in full["stages"].items():
            print(
                f"  {s:<14}{fmt(v['papermill_s']):>12}{fmt(v['process_s']):>11}"
                f"{fmt(v['peak_rss_mb'], '.0f'):>13}"
            )
        pm_sum = sum(v["papermill_s"] or 0 for v in full["stages"].values())
        pr_sum = sum(v["process_s"] or 0 for v in full["stages"].values())
        print(
            f"  {'sum':<14}{pm_sum:>12.2f}{pr_sum:>11.2f}   (wall - process sum = DVC's own"
            f" time: {full['median_s'] - pr_sum:.1f} s)"
        )
    return [("full dvc repro -f (median)", full.get("median_s"), TARGETS["full_s"])]


def print_noop(noop: dict[str, Any]) -> list[Check]:
    walls = ", ".join(f"{r['wall_s']:.2f}" for r in noop["runs"])
    load = statistics.median(r["other_load_cores"] for r in noop["runs"])
    walls += f" (other load {load:.2f} cores)"
    print(f"NO-OP `dvc repro`: {walls} s; all up to date: {noop['all_up_to_date']}")
    return [("no-op dvc repro (median)", noop.get("median_s"), TARGETS["noop_s"])]


def print_overhead(overhead: dict[str, Any]) -> list[Check]:
    print("PAPERMILL OVERHEAD: stage command (nbrun) vs the same code cells as a plain script")
    print(
        f"  {'stage':<14}{'nbrun s':>9}{'script s':>10}{'(body s)':>10}{'overhead s':>12}"
        f"{'ratio':>7}{'papermill dur':>15}{'cell sum':>10}  {'html*':<8} other load"
    )
    checks = []
    for s, v in overhead.items():
        html = v.get("html_render")
        html_s = f"{html['import_s'] + html['render_s']:.2f} s" if html else "-"
        print(
            f"  {s:<14}{v['nbrun_s']:>9.2f}{v['script_s']:>10.2f}"
            f"{fmt(v.get('script_body_s')):>10}{v['overhead_s']:>12.2f}"
            f"{v['nbrun_s'] / v['script_s']:>7.2f}{v['papermill_duration_s']:>15.2f}"
            f"{v['cell_sum_s']:>10.2f}  {html_s:<8} {fmt(v.get('other_load_cores'))}"
        )
        checks.append((f"papermill overhead {s}", v["overhead_s"], TARGETS["overhead_s"]))
    print(
        "  medians of alternating runs; overhead = nbrun - script (whole processes); body = the"
        " script's code without interpreter start/exit;\n  papermill dur = papermill's own"
        " duration (kernel start + cells); *html render timed alone, in a fresh process"
    )
    return checks


def _print_scaling_totals(totals: list[dict[str, Any]]) -> None:
    print(
        f"  {'size':>6}{'rows':>11}{'wall s':>9}{'s/row vs 1st':>14}{'exp k':>7}"
        f"{'tree RSS MB':>13}{'exp k':>7}{'largest proc MB':>17}{'other load':>12}  status"
    )
    for row in totals:
        status = "ok" if row["finished"] else "DID NOT FINISH"
        print(
            f"  {'x' + str(row['factor']):>6}{row['rows']:>11,}{row['wall_s']:>9.1f}"
            f"{fmt(row.get('time_per_row_vs_base'), '.3f'):>14}{fmt(row.get('time_exponent')):>7}"
            f"{fmt(row.get('peak_tree_rss_mb'), '.0f'):>13}{fmt(row.get('rss_exponent')):>7}"
            f"{fmt(row.get('max_rss_largest_process_mb'), '.0f'):>17}"
            f"{fmt(row.get('other_load_cores')):>12}  {status}"
        )


def _print_scaling_cells(an: dict[str, Any]) -> None:
    print("  exponent k (t ~ rows^k) between consecutive sizes, cells taking >= 1 s at the larger:")
    for entry in an.get("cells", []):
        big = [k for k, v in entry["exponents"].items() if v is not None]
        if not big or max(entry["s"].values()) < 1.0:
            continue
        ks = ", ".join(
            f"x{k.replace('->', '->x')}: {v:.2f}" for k, v in entry["exponents"].items() if v is not None
        )
        secs = ", ".join(f"{v:.1f}" for v in entry["s"].values())
        print(f"    {entry['stage']:<13} cell {entry['cell']:>2} {entry['label'][:45]:<45} s=[{secs}]  {ks}")
    if an.get("superlinear"):
        print("  SUPERLINEAR (k > 1.15, >= 1 s):")
        for s in an["superlinear"]:
            print(
                f"    {s['stage']} cell {s['cell']} `{s['label']}` {s['between']}: k={s['exponent']}"
                f" ({s['seconds'][0]:.1f} s -> {s['seconds'][1]:.1f} s)"
            )


def print_scaling(sc: dict[str, Any]) -> list[Check]:
    an = sc.get("analysis", {})
    if sc["reduced_params"]:
        how = "REDUCED for these runs only: " + json.dumps(sc.get("param_changes"))
    else:
        how = "as in params.yaml"
    print(f"SCALING (data repeated, unique ids, Parquet; candidate params {how})")
    _print_scaling_totals(an.get("totals", []))
    factors = [str(r["factor"]) for r in an.get("totals", [])]
    print("  per stage: papermill seconds (CPU seconds of nbrun + kernel; process wall time is in the JSON):")
    print("  " + f"{'stage':<14}" + "".join(f"{'x' + f:>18}" for f in factors))
    for stage, by in an.get("stages", {}).items():
        cells = [f"{fmt(by[f]['papermill_s'], '.1f')} ({fmt(by[f].get('cpu_s'), '.1f')})" for f in factors]
        print("  " + f"{stage:<14}" + "".join(f"{c:>18}" for c in cells))
    _print_scaling_cells(an)
    return []


def print_steps(st: dict[str, Any]) -> list[Check]:
    factors = sorted(st["sizes"], key=int)
    print(
        "STEPS: the pipeline's functions timed in one process (CPU s, all threads; wall s in the JSON)"
        + (", reduced candidates" if st.get("reduced_params") else "")
    )
    for f in factors:
        r = st["sizes"][f]
        state = "ok" if r.get("finished") else "DID NOT FINISH"
        print(
            f"  x{f}: {r['rows']:,} rows, {r['wall_s']:.0f} s, other load {r['other_load_cores']:.2f} cores, {state}"
        )
    print(
        f"  {'stage':<13}{'step':<46}"
        + "".join(f"{'x' + f:>9}" for f in factors)
        + "   k (cpu) between sizes"
    )
    for e in st["analysis"]["steps"]:
        ks = ", ".join(f"{v:.2f}" for v in e["cpu_exponents"].values() if v is not None)
        cells = "".join(f"{fmt(e['cpu_s'].get(f)):>9}" for f in factors)
        print(f"  {e['stage']:<13}{e['step'][:45]:<46}{cells}   {ks}")
    if st["analysis"]["superlinear"]:
        print("  SUPERLINEAR (CPU exponent > 1.15, >= 0.5 CPU s):")
        for x in st["analysis"]["superlinear"]:
            print(
                f"    {x['stage']} {x['step']} {x['between']}: k={x['exponent']}"
                f" ({x['cpu_s'][0]:.2f} -> {x['cpu_s'][1]:.2f} CPU s)"
            )
    return []


def print_report(res: dict[str, Any]) -> None:
    """The whole printout of a results dict (a run's, or a saved JSON's)."""
    print_header(res)
    checks: list[Check] = []
    for part, show in (
        ("full", print_full),
        ("noop", print_noop),
        ("overhead", print_overhead),
        ("scaling", print_scaling),
    ):
        if part in res:
            checks += show(res[part])
    if "steps" in res and res["steps"].get("analysis"):
        checks += print_steps(res["steps"])
    if checks:
        print(LINE)
        print("TARGETS")
        for name, value, target in checks:
            print(f"  {name:<40}{fmt(value):>9} s  target <= {target:>5} s  {verdict(value, target)}")
    print(LINE)
