"""One drift check: the champion's logged predictions vs its reference, new feedback, and whether to retrain.

Used by the `drift-monitor` Prefect flow (flows/monitor.py), which starts the retraining deployment when
this says so, and by `lab2prod monitor`. The check itself starts nothing: it reads the registry, the
prediction log (`serve.log_dir`) and the feedback inbox (`serve.feedback_dir`), and writes
`<monitor.report_dir>/drift.json` and `drift.png`.

Retraining is asked for when the served inputs or answers drifted (lab2prod/monitor/drift.py) or when at least
`monitor.min_feedback` labelled corrections arrived since the monitor last started a run, and not within
`monitor.cooldown_hours` of that run. The time of that run is kept in `<report_dir>/state.json`.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path
from typing import Any

import fsspec

from lab2prod.core.files import read_json, write_json
from lab2prod.core.settings import Params
from lab2prod.core.storage import is_remote, resolve
from lab2prod.data.images import IMAGE_SUFFIXES
from lab2prod.data.text import TEXT_SUFFIXES
from lab2prod.monitor import drift
from lab2prod.registry.store import champion, local_copy, location, manifest
from lab2prod.serve.prediction_log import read_log

log = logging.getLogger("lab2prod.monitor")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def champion_reference(registry: str, version: str) -> dict[str, Any] | None:
    """The reference.json registered with a version (export writes it); None for versions from before it."""
    if drift.REFERENCE_FILE not in manifest(registry, version)["files"]:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        return read_json(local_copy(registry, version, drift.REFERENCE_FILE, Path(scratch)))


def new_feedback(inbox: str, since: dt.datetime | None) -> int:
    """Image and text files in the feedback inbox added after `since` (all of them when None)."""
    fs, root = fsspec.core.url_to_fs(inbox)
    if not fs.exists(root):
        return 0
    count = 0
    for path, info in fs.find(root, detail=True).items():
        suffix = Path(path).suffix.lower()
        if (suffix not in IMAGE_SUFFIXES and suffix not in TEXT_SUFFIXES) or Path(path).name.startswith("."):
            continue
        modified = info.get("mtime") or info.get("LastModified") or info.get("created")
        if since is None or modified is None:
            count += 1
            continue
        when = modified if isinstance(modified, dt.datetime) else dt.datetime.fromtimestamp(float(modified), dt.UTC)
        count += when.astimezone(dt.UTC) > since
    return count


def check(params: Params, project: Path, now: dt.datetime | None = None) -> dict[str, Any]:
    """Run one drift and feedback check; returns the report (also written to the report dir)."""
    cfg, now = params.monitor, now or _now()
    out = Path(resolve(cfg.report_dir, project))
    state = read_json(out / "state.json") if (out / "state.json").exists() else {}
    last = dt.datetime.fromisoformat(state["last_triggered"]) if state.get("last_triggered") else None
    registry = location(project, params.retrain.registry_dir)
    report: dict[str, Any] = {"checked_at": now.isoformat(timespec="seconds"), "registry": registry}
    current = champion(registry)
    inbox = resolve(params.serve.feedback_dir, project)
    feedback = new_feedback(inbox, last)
    report["feedback"] = {"inbox": inbox, "new": feedback, "min_feedback": cfg.min_feedback}
    if current is None:
        report.update(champion=None, drift={"drift": False, "why": "no champion to compare with"})
    else:
        report["champion"] = current["version"]
        ref = champion_reference(registry, current["version"])
        since = now - dt.timedelta(hours=cfg.window_hours)
        if last and last > since:
            since = last  # what the model saw after the last retraining run the monitor started
        log_dir = Path(resolve(params.serve.log_dir, project))
        rows = [r for r in read_log(log_dir, since.isoformat()) if r.get("model_version") == current["version"]]
        report["window"] = {"since": since.isoformat(timespec="seconds"), "log_dir": str(log_dir)}
        if ref is None:
            report["drift"] = {
                "drift": False,
                "n_live": len(rows),
                "why": f"version {current['version']} has no {drift.REFERENCE_FILE} (exported before lab2prod wrote "
                "one): register a new version to monitor it",
            }
        else:
            report["drift"] = drift.compare(ref, rows, cfg.psi_threshold, cfg.min_predictions)
            if rows:
                drift.plot(ref, rows, report["drift"], out / "drift.png")
    reasons = []
    if report["drift"].get("drift"):
        reasons.append(f"drift ({report['drift']['why']})")
    if feedback >= cfg.min_feedback:
        reasons.append(f"{feedback} new labelled corrections >= monitor.min_feedback = {cfg.min_feedback}")
    cooling = last is not None and now - last < dt.timedelta(hours=cfg.cooldown_hours)
    report["retrain"] = {
        "needed": bool(reasons) and not cooling,
        "reasons": reasons,
        "cooldown": f"the monitor started a run at {last.isoformat(timespec='seconds')}, within "
        f"monitor.cooldown_hours = {cfg.cooldown_hours:g}"
        if reasons and cooling
        else None,
        "deployment": cfg.retrain_deployment,
    }
    if not is_remote(str(out)):
        write_json(out / "drift.json", report)
    return report


def record_trigger(params: Params, project: Path, flow_run: str, now: dt.datetime | None = None) -> None:
    """Remember when the monitor started a retraining run (feedback is counted from then, cooldown starts)."""
    out = Path(resolve(params.monitor.report_dir, project))
    write_json(out / "state.json", {"last_triggered": (now or _now()).isoformat(), "flow_run": flow_run})


def markdown(report: dict[str, Any]) -> str:
    """The report as a Prefect markdown artifact."""
    d, r = report["drift"], report["retrain"]
    lines = [
        f"# Drift check {report['checked_at']}",
        f"Champion **{report.get('champion')}**; {d.get('n_live', 0)} logged predictions"
        + (f" vs {d['n_reference']} test images" if "n_reference" in d else ""),
        "",
        f"**{'DRIFT' if d.get('drift') else 'no drift'}**: {d.get('why', '')}",
        "",
    ]
    if d.get("features"):
        lines += ["| feature | PSI | KS | p-value |", "|---|---|---|---|"]
        for name, f in d["features"].items():
            ks = f"{f['ks']:.3f} | {f['ks_pvalue']:.2g}" if "ks" in f else "- | -"
            lines.append(f"| {name} | {f['psi']:.3f} | {ks} |")
    lines += [
        "",
        f"New labelled corrections: {report['feedback']['new']} (retrain at {report['feedback']['min_feedback']})",
        "",
        f"Retraining: **{'started' if r.get('flow_run') else 'needed' if r['needed'] else 'not needed'}**"
        + (f" ({'; '.join(r['reasons'])})" if r["reasons"] else "")
        + (f"; {r['cooldown']}" if r.get("cooldown") else ""),
    ]
    return "\n".join(lines)
