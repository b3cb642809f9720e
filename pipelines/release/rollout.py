"""`make rollout`: the challenger role and the rollout state, changed in the MLflow registry.

python -m pipelines rollout --start 3                   # v3 becomes challenger, in shadow
python -m pipelines rollout --mode canary [--share X]   # the challenger answers a share of traffic
python -m pipelines rollout --mode shadow               # the champion answers all, the challenger scores too
python -m pipelines rollout --mode off                  # the challenger is taken out
python -m pipelines rollout --finish                    # the challenger becomes champion; rollout off
python -m pipelines rollout --analyze [--watch]         # judge the current step: advance, abort or wait

The registry is the one source of truth (docs/rollout.md): the `challenger` alias and the
`rollout.*` registered-model tags (pipelines/release/registry.py). Every change runs under the
store's promotion lock, after repairing what a crashed promote or rollback left, and is a decision
record: returned, appended to <store>/promotions.jsonl beside the gate's, and tagged on the
challenger version (`rollout.<event>_at`). The service does not follow the registry yet.

`--analyze` (docs/rollout.md, "Automatic analysis") judges the current step on the prediction log
(pipelines/monitoring/arms.py, comparison.decide): pass advances (shadow -> the first canary step,
a canary step -> the next, the last step -> finish), fail aborts (mode off: the challenger is taken
out), inconclusive waits. A pass or fail is a decision record like the others, with the analysis in
it and on the challenger version's tags; every analysis rewrites `paths.rollout` (.json, and .html
beside it).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.core import files, stores
from pipelines.core.errors import ParamsError, PipelineError
from pipelines.monitoring import comparison
from pipelines.release import registry

ON_PASS = ("champion", "rollout")
LOG_FILE = registry.DECISIONS_FILE  # the store's decision log, the one promotion.record appends to
RESET_HINT = "`make rollout MODE=off` resets it"


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def check(params: dict[str, Any]) -> dict[str, Any]:
    """params.yaml `rollout:`, refused in one line when a value would not make sense."""
    rules = params.get("rollout")
    if not isinstance(rules, dict):
        raise ParamsError("params.yaml has no rollout section")
    if rules.get("on_pass") not in ON_PASS:
        raise ParamsError(f"rollout.on_pass must be one of {', '.join(ON_PASS)}")
    steps = rules.get("steps")
    if (
        not isinstance(steps, list)
        or not steps
        or not all(_number(s) and 0 < s <= 1 for s in steps)
        or any(a >= b for a, b in itertools.pairwise(steps))
    ):
        raise ParamsError("rollout.steps must be a rising list of shares above 0 and at most 1")
    field = rules.get("routing_field")
    if field is not None and (not isinstance(field, str) or not field.strip()):
        raise ParamsError("rollout.routing_field must be a column name, or null")
    if not _number(rules.get("poll_seconds")) or not rules["poll_seconds"] > 0:
        raise ParamsError("rollout.poll_seconds must be a number of seconds above 0")
    if not isinstance(rules.get("analysis"), dict):
        raise ParamsError("rollout.analysis must be a mapping of the analysis settings")
    comparison.check_settings(rules["analysis"])
    return rules


@contextlib.contextmanager
def _locked(client: Any, name: str, store: Path) -> Iterator[list[str]]:
    """The store's promotion lock, held after repairing a crashed promote or rollback."""
    with registry.exclusive(store):
        yield registry.repair(client, name)


def _state(client: Any, name: str) -> dict[str, Any]:
    try:
        return registry.rollout_state(client, name)
    except PipelineError as exc:
        raise PipelineError(f"{exc}: refused, untrusted; {RESET_HINT}") from None


def _champion(client: Any, name: str) -> str:
    found = registry.champion_version(client, name)
    if found is None:
        raise PipelineError(f"'{name}' has no champion: promote one first (make promote)")
    return str(found.version)


def _registered(client: Any, name: str, version: Any) -> str:
    from mlflow.exceptions import MlflowException

    text = str(version)
    if not (text.isascii() and text.isdigit()):
        raise PipelineError(f"{text[:40]!r} is not a version number")
    try:
        client.get_model_version(name, text)
    except MlflowException:
        raise PipelineError(f"'{name}' has no version {text}") from None
    return text


def _record(client: Any, name: str, event: str, store: Path, found: dict[str, Any]) -> dict[str, Any]:
    """The decision: tagged on the challenger version, appended to the store's decision log."""
    decision = {"at": registry.now(), "registered_model": name, "rollout": event, **found}
    if found.get("challenger_version"):
        client.set_model_version_tag(name, found["challenger_version"], f"rollout.{event}_at", decision["at"])
    files.append_jsonl(decision, store / LOG_FILE)
    return decision


def start(
    client: Any, name: str, version: Any, params: dict[str, Any], store: Path, reason: str = "manual"
) -> dict[str, Any]:
    """A registered version that is not the champion becomes challenger, in shadow (share 0, step 0)."""
    check(params)
    with _locked(client, name, store) as repairs:
        version = _registered(client, name, version)
        champion = _champion(client, name)
        if version == champion:
            raise PipelineError(f"v{version} is champion of '{name}': the challenger must be another version")
        if version in registry.history(client, name):
            raise PipelineError(f"v{version} is a former champion of '{name}': `make rollback` returns to it")
        state = _state(client, name)
        if state["mode"] != "off":
            raise PipelineError(
                f"a rollout of v{state['challenger']} is under way ({state['mode']}): end it first (MODE=off)"
            )
        registry.set_challenger(client, name, version)
        at = registry.now()
        registry.write_rollout(  # the mode last: the rollout is on only once the rest is written
            client,
            name,
            {
                registry.SALT_TAG: version,
                registry.SHARE_TAG: "0",
                registry.STEP_TAG: "0",
                registry.STARTED_TAG: at,
                registry.UPDATED_TAG: at,
                registry.MODE_TAG: "shadow",
            },
        )
        found = _found("shadow", 0.0, 0, version, champion, reason, repairs)
        return _record(client, name, "start", store, found)


def _found(
    mode: str,
    share: float,
    step: int,
    challenger: str | None,
    champion: str | None,
    reason: str,
    repairs: list[str],
) -> dict[str, Any]:
    found = {
        "mode": mode,
        "share": share,
        "step": step,
        "challenger_version": challenger,
        "champion_version": champion,
        "reasons": [reason],
    }
    return {**found, "repairs": repairs} if repairs else found


def canary_share(share: Any, state: dict[str, Any], steps: list[float]) -> tuple[float, int]:
    """The canary's share and step: the share given, else the current step's share (the first
    step after shadow). The step is the last one at or below the share."""
    if share is None:
        step = state["step"] if state["mode"] == "canary" else 0
        if step >= len(steps):
            raise PipelineError(
                f"rollout.step {step} is beyond rollout.steps ({len(steps)} steps): give a share"
            )
        return float(steps[step]), step
    if not _number(share) or not 0 < share <= 1:
        raise PipelineError(f"a canary share must be above 0 and at most 1, not {share!r}")
    return float(share), max(bisect.bisect_right(steps, share) - 1, 0)


def set_mode(
    client: Any,
    name: str,
    mode: str,
    share: Any,
    params: dict[str, Any],
    store: Path,
    reason: str = "manual",
    analysis: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """shadow (share 0), canary (share in (0, 1], needs a challenger), or off (the challenger is
    taken out and the champion answers all traffic). With `analysis` (an automatic decision), the
    rollout must still be the one analysed, and the record carries the analysis."""
    rules = check(params)
    if mode not in registry.MODES:
        raise PipelineError(f"a rollout mode is one of {', '.join(registry.MODES)}, not {mode!r}")
    if mode != "canary" and share is not None:
        raise PipelineError(f"a share applies to canary only, not to {mode}")
    with _locked(client, name, store) as repairs:
        if analysis is not None:
            _unchanged(_state(client, name), analysis)
        if mode == "off":
            return _end(client, name, store, reason, repairs, analysis)
        state = _state(client, name)
        if state["mode"] == "off":
            raise PipelineError(f"'{name}' has no rollout under way: start one with a challenger version")
        champion = _champion(client, name)
        if state["challenger"] == champion:
            raise PipelineError(f"challenger v{champion} is champion now: end the rollout (MODE=off)")
        if mode == "shadow":  # the canary stops first: the mode is written before the share
            tags = {registry.MODE_TAG: "shadow", registry.SHARE_TAG: "0", registry.STEP_TAG: "0"}
            share, step = 0.0, 0
        else:  # the share is in place before the canary starts: the mode is written last
            share, step = canary_share(share, state, rules["steps"])
            tags = {
                registry.SHARE_TAG: repr(share),
                registry.STEP_TAG: str(step),
                registry.MODE_TAG: "canary",
            }
        registry.write_rollout(client, name, {**tags, registry.UPDATED_TAG: registry.now()})
        found = _found(mode, share, step, state["challenger"], champion, reason, repairs)
        if mode == "canary":
            found["steps"] = rules["steps"]
        return _record(client, name, mode, store, _with(found, analysis))


def _stop(client: Any, name: str) -> str | None:
    """Turn the rollout off: the mode first (the champion takes 100 % at once), then the rest.
    Reads nothing but the alias, so it also resets tags that `rollout_state` refuses."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise PipelineError(f"'{name}' is not a registered model") from None
    found = registry.challenger_version(client, name)
    tags = {registry.MODE_TAG: "off", registry.SHARE_TAG: "0", registry.STEP_TAG: "0"}
    registry.write_rollout(client, name, {**tags, registry.UPDATED_TAG: registry.now()})
    registry.clear_challenger(client, name)
    return str(found.version) if found is not None else None


def _end(
    client: Any,
    name: str,
    store: Path,
    reason: str,
    repairs: list[str],
    analysis: dict[str, Any] | None = None,
) -> dict[str, Any]:
    challenger = _stop(client, name)
    champion = registry.champion_version(client, name)
    champion = str(champion.version) if champion is not None else None
    found = _found("off", 0.0, 0, challenger, champion, reason, repairs)
    return _record(client, name, "off", store, _with(found, analysis))


def finish(
    client: Any,
    name: str,
    params: dict[str, Any],
    store: Path,
    reason: str = "manual",
    analysis: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The challenger becomes champion (registry.promote_version: the alias is the commit point,
    the history and previous-champion follow), then the rollout ends."""
    check(params)
    with _locked(client, name, store) as repairs:
        state = _state(client, name)
        if analysis is not None:
            _unchanged(state, analysis)
        if state["mode"] == "off":
            raise PipelineError(f"'{name}' has no rollout under way to finish")
        challenger = state["challenger"]
        former = registry.champion_version(client, name)
        former = str(former.version) if former is not None else None
        if challenger != former:  # else a finish that crashed after its alias move: only end it
            registry.promote_version(client, name, challenger)
        _stop(client, name)
        found = _found("off", 0.0, 0, challenger, challenger, reason, repairs)
        found.update(from_version=former, finished_from=state["mode"], finished_share=state["share"])
        return _record(client, name, "finish", store, _with(found, analysis))


def run(
    root: Path,
    params: dict[str, Any],
    *,
    start_version: str | None = None,
    mode: str | None = None,
    share: float | None = None,
    finish_it: bool = False,
    reason: str = "manual",
) -> dict[str, Any]:
    """What `python -m pipelines rollout` asks, on the project's registry (one of start, mode, finish)."""
    client, name, store = _registry(root, params)
    if start_version is not None:
        if share is not None:
            raise PipelineError("a rollout starts in shadow: give a share to --mode canary afterwards")
        return start(client, name, start_version, params, store, reason)
    if finish_it:
        return finish(client, name, params, store, reason)
    return set_mode(client, name, str(mode), share, params, store, reason)


def _registry(root: Path, params: dict[str, Any]) -> tuple[Any, str, Path]:
    """The project's registry client, registered model name and store."""
    import mlflow

    if stores.main_root(root) != root:
        raise PipelineError("a rollout never changes inside a DVC experiment's temporary workspace")
    name = (params.get("promote") or {}).get("registered_model")
    if not isinstance(name, str) or not name:
        raise ParamsError("promote.registered_model in params.yaml must name the registered model")
    store = stores.mlflow_store(root, params)
    store.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(stores.tracking_uri(store)), name, store


def _percent(share: float) -> str:
    return f"{share * 100:g}%"


def summary(decision: dict[str, Any]) -> str:
    """The decision as the one line `make rollout` prints."""
    challenger, champion = decision["challenger_version"], decision["champion_version"]
    if decision["rollout"] == "finish":
        was = f"v{decision['from_version']}" if decision["from_version"] else "none"
        return f"ROLLOUT finished: challenger v{challenger} is champion (was {was}); the rollout is off"
    if decision["mode"] == "off":
        answers = f"champion v{champion} answers all traffic" if champion else "no champion"
        out = f"challenger v{challenger} taken out" if challenger else "no challenger was set"
        return f"ROLLOUT off: {answers} ({out})"
    if decision["mode"] == "shadow":
        return f"ROLLOUT shadow: challenger v{challenger} beside champion v{champion}"
    steps = decision["steps"]
    return (
        f"ROLLOUT canary: challenger v{challenger} answers {_percent(decision['share'])} of traffic, "
        f"champion v{champion} the rest (step {decision['step'] + 1} of {len(steps)})"
    )


# --- automatic analysis (docs/rollout.md, "Automatic analysis") ---


def _unchanged(state: dict[str, Any], analysis: dict[str, Any]) -> None:
    """Refuses to act on a rollout that changed after it was read for the analysis."""
    analysed = analysis["state"]
    if any(state[k] != analysed[k] for k in ("mode", "challenger", "step", "updated_at")):
        raise PipelineError("the rollout changed while it was analysed: nothing done; analyze again")


def _with(found: dict[str, Any], analysis: dict[str, Any] | None) -> dict[str, Any]:
    if analysis is None:
        return found
    decision = analysis["decision"]
    found["reasons"] = [*found["reasons"], *decision["reasons"]]
    found["analysis"] = {
        "outcome": decision["outcome"],
        "analysed": {k: analysis["state"][k] for k in ("mode", "share", "step", "updated_at")},
        "report": analysis.get("report_path"),
    }
    return found


def _tag_analysis(client: Any, name: str, record: dict[str, Any]) -> None:
    """The analysis on the challenger version's tags, beside `rollout.<event>_at`."""
    version = record.get("challenger_version")
    if version:
        client.set_model_version_tag(name, version, "rollout.analysis_outcome", record["analysis"]["outcome"])
        client.set_model_version_tag(
            name, version, "rollout.analysis_reasons", " ".join(record["reasons"])[:4900]
        )


def analyze(root: Path, params: dict[str, Any], client: Any, name: str, folder: Path) -> dict[str, Any]:
    """One analysis of the current step: {"state", "champion", "figures", "decision"}; with the
    rollout off, {"state"} only (nothing to judge)."""
    from pipelines.monitoring import arms

    rules = check(params)
    state = _state(client, name)
    if state["mode"] == "off":
        return {"state": state}
    champion = _champion(client, name)
    since = arms.since_of(state["updated_at"])
    versions = {"champion": champion, "challenger": state["challenger"]}
    lines, outcomes, labelled = arms.read_step(folder, since, versions)
    settings = rules["analysis"]
    share = float(state.get("share") or 0.0)
    figures = arms.figures(
        lines,
        outcomes,
        since,
        state["mode"],
        labelled,
        _positive(root, params, versions) if len(labelled) else None,
        min_labels=(params.get("monitor") or {}).get("min_labels", 30),
        tolerance=settings.get("agreement_tolerance"),
        share=share,
    )
    decision = arms.judge(figures, settings, state["mode"], share)
    return {"state": state, "champion": champion, "figures": figures, "decision": decision}


def _positive(root: Path, params: dict[str, Any], versions: dict[str, str]) -> Any:
    """The positive class a binary classifier's live metrics need: its reference's, as the monitor finds it."""
    from pipelines.monitoring import monitor

    served = monitor.find_served(root, params, list(versions.values()))
    return next((p for p in map(monitor.positive_class, served.values()) if p is not None), None)


def act(
    client: Any, name: str, params: dict[str, Any], store: Path, analysis: dict[str, Any]
) -> dict[str, Any] | None:
    """What the outcome asks of the registry: pass advances one step (the last one finishes the
    rollout), fail aborts (off), inconclusive does nothing (None)."""
    outcome, state = analysis["decision"]["outcome"], analysis["state"]
    reason = f"automatic analysis: {outcome}"
    if outcome == "fail":
        return set_mode(client, name, "off", None, params, store, reason, analysis)
    if outcome != "pass":
        return None
    steps = check(params)["steps"]
    if state["mode"] == "shadow":
        return set_mode(client, name, "canary", None, params, store, reason, analysis)
    following = [share for share in steps if share > state["share"]]
    if following:
        return set_mode(client, name, "canary", following[0], params, store, reason, analysis)
    return finish(client, name, params, store, reason, analysis)


def report_paths(root: Path, params: dict[str, Any]) -> tuple[Path, Path]:
    """paths.rollout (JSON) and the HTML beside it."""
    path = (params.get("paths") or {}).get("rollout")
    if not isinstance(path, str) or not path.endswith(".json"):
        raise ParamsError("paths.rollout in params.yaml must name the rollout report's .json file")
    return root / path, (root / path).with_suffix(".html")


def run_analysis(root: Path, params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`python -m pipelines rollout --analyze`: analyse, act, write the report. Returns the
    analysis with `record` (the decision record of a pass or fail, else None) and `line`."""
    from pipelines.monitoring import arms

    client, name, store = _registry(root, params)
    json_path, html_path = report_paths(root, params)
    analysis = analyze(root, params, client, name, folder)
    if "decision" not in analysis:
        return {**analysis, "record": None, "line": "ANALYSIS off: no rollout under way, nothing to judge"}
    analysis["report_path"] = params["paths"]["rollout"]
    record = act(client, name, params, store, analysis)
    if record is not None:
        _tag_analysis(client, name, record)
    found = arms.report(
        analysis["state"],
        analysis["champion"],
        analysis["figures"],
        analysis["decision"],
        check(params)["analysis"],
        registry.now(),
    )
    found["record"] = record
    files.write_json(found, json_path)
    files.write_text(arms.render_html(found), html_path)
    return {**analysis, "record": record, "line": analysis_line(analysis, record)}


def _where(state: dict[str, Any]) -> str:
    return "shadow" if state["mode"] == "shadow" else f"canary {_percent(state['share'])}"


def analysis_line(analysis: dict[str, Any], record: dict[str, Any] | None) -> str:
    """The one line an analysis prints."""
    decision = analysis["decision"]
    head = f"ANALYSIS {decision['outcome']} at {_where(analysis['state'])}"
    if record is None:
        return f"{head}: the step waits; {decision['reasons'][0]}"
    if decision["outcome"] == "fail":
        return f"{head}: {summary(record)}; {decision['reasons'][0]}"
    return f"{head}: {summary(record)}"


def watch(
    root: Path,
    params: dict[str, Any],
    folder: Path,
    emit: Any,
    max_seconds: float | None = None,
    sleep: Any = None,
) -> int:
    """Analyses every rollout.poll_seconds until the rollout is off (finished or aborted), or
    `max_seconds` passed; `emit` gets each line. Returns 1 if an analysis aborted the rollout, else 0."""
    import time

    poll = check(params)["poll_seconds"]
    pause = sleep or time.sleep
    start = time.monotonic()
    while True:
        result = run_analysis(root, params, folder)
        emit(result["line"])
        outcome = result.get("decision", {}).get("outcome")
        if outcome == "fail":
            return 1
        finished = result["record"] is not None and result["record"]["rollout"] == "finish"
        if "decision" not in result or finished:
            return 0
        if max_seconds is not None and time.monotonic() - start + poll > max_seconds:
            return 0
        pause(poll)
