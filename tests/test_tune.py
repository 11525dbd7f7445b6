"""lab2prod tune: an Optuna study whose trials are real DVC experiments in a sandbox project (tiny settings).

What the tuner recorded is compared with what DVC itself shows for each experiment (`dvc exp show --json`), not
with anything the tuner computed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FP32_ONLY
from tests.sandbox import commit, make_project, project_env, sh, write_params

pytestmark = pytest.mark.slow

# TINY, made cheaper still: no compressed variants, no baseline, a short benchmark (each trial runs train,
# evaluate, compress and export once).
FAST = {
    **FP32_ONLY,
    "train": {"epochs": 2},
    "evaluate": {"baseline": "none"},
    "export": {"benchmark_calls": 10, "benchmark_batch_calls": 5, "benchmark_seconds": 1},
}
SPACE = {"train.width": {"choices": [4, 8]}}  # TPE seeded 0 picks 8, seeded 2 picks 4 (optuna 5.0)


def tuned_project(where: Path, tune: dict[str, Any]) -> Path:
    repo = make_project(where)
    write_params(repo, FAST)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["tune"] = tune
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    commit(repo, "tune settings")
    return repo


def lab2prod(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "lab2prod.cli.main", *args, check=check, timeout=900)


def experiments(repo: Path) -> dict[str, dict[str, Any]]:
    """name -> {"params": params.yaml's values, "metrics": metrics/summary.json (the metrics file DVC shows), "train":
    the experiment commit's metrics/train/metrics.json (DVCLive's record)} of every experiment `dvc exp show` lists."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            data = node.get("data")
            if str(node.get("name")).startswith("lab2prod-t") and isinstance(data, dict) and "params" in data:
                found[node["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": data.get("metrics", {}).get("metrics/summary.json", {}).get("data", {}),
                    "train": json.loads(sh(repo, "git", "show", f"{node['rev']}:metrics/train/metrics.json").stdout),
                }
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(sh(repo, sys.executable, "-m", "dvc", "exp", "show", "--json").stdout))
    return found


def test_study_runs_trials_as_experiments_records_their_metrics_and_resumes(tmp_path: Path) -> None:
    repo = tuned_project(tmp_path / "p", {"space": SPACE, "trials": 1, "seed": 0})
    params_before = (repo / "params.yaml").read_bytes()
    out = lab2prod(repo, "tune")
    assert sorted(experiments(repo)) == ["lab2prod-t0"], out.stdout + out.stderr
    assert "trial 0" in out.stdout and "Pareto front" in out.stdout, out.stdout
    for png in ("pareto.png", "history.png"):
        assert (repo / "reports/tune" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert (repo / "params.yaml").read_bytes() == params_before  # the workspace is left as it was

    # A trial left RUNNING by a process that was killed: it must neither block nor count as finished. The study
    # resumes to two finished trials: the dead one fails, one more runs (its sampler seeded past the first pick).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = (
        "import optuna, socket, sys; s = optuna.load_study(study_name='lab2prod', storage=sys.argv[1]); "
        "t = s.ask(); t.set_user_attr('host', socket.gethostname()); t.set_user_attr('pid', int(sys.argv[2]))"
    )
    url = f"sqlite:///{repo / '.lab2prod/tune.db'}"
    subprocess.run([sys.executable, "-c", code, url, str(dead.pid)], check=True, env={**os.environ})

    again = lab2prod(repo, "tune", "--trials", "2")
    exps = experiments(repo)
    assert sorted(exps) == ["lab2prod-t0", "lab2prod-t2"], again.stdout + again.stderr
    assert {exps[n]["params"]["train"]["width"] for n in exps} == {4, 8}, exps
    record = json.loads((repo / "reports/tune/study.json").read_text())
    states = {t["number"]: t["state"] for t in record["trials"]}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}, record
    assert "interrupted" in record["trials"][1]["fail_reason"]
    trials = {t["number"]: t for t in record["trials"] if t["state"] == "COMPLETE"}
    for t in trials.values():
        exp = exps[t["experiment"]]
        assert t["params"]["train.width"] == exp["params"]["train"]["width"]
        assert t["values"]["val_accuracy"] == pytest.approx(exp["train"]["val"]["acc"], abs=1e-12)
        assert exp["metrics"]["val_acc"] == pytest.approx(exp["train"]["val"]["acc"], abs=1e-12)
        assert t["values"]["macs"] > 0
    # the wider network costs more MACs: the objective is the deployable model's, read from the run
    by_width = {t["params"]["train.width"]: t["values"]["macs"] for t in trials.values()}
    assert by_width[8] > by_width[4], by_width
    assert set(record["pareto"]) <= {0, 2} and record["pareto"], record
    assert (repo / "params.yaml").read_bytes() == params_before

    # `lab2prod runs`: one row per run, the one setting that differs as its only settings column, within 100 columns
    table = sh(repo, sys.executable, "-m", "lab2prod.cli.main", "runs", env=project_env(repo, COLUMNS="100")).stdout
    assert max(len(line) for line in table.splitlines()) <= 100, table
    header = table.split("┡")[0]
    assert "width" in header and "lr" not in header.split() and "epochs" not in header, table
    for name, exp in exps.items():
        row = next(line for line in table.splitlines() if name in line)
        assert f"{100 * exp['train']['val']['acc']:.2f} %" in row, (row, exp["train"])
    compared = sh(
        repo, sys.executable, "-m", "lab2prod.cli.main", "runs", "--compare", "lab2prod-t0", "--compare", "lab2prod-t2",
        env=project_env(repo, COLUMNS="120"),
    ).stdout  # fmt: skip
    assert "train.width" in compared and "train.lr" not in compared, compared
    # ... with every figure of the two runs' records that differs: shares in percent, latencies as they are
    rows = compared.splitlines()
    assert "%" not in next(r for r in rows if "onnx_fp32.batch1_p50_ms" in r), compared  # a latency, in ms
    shares = [r for r in rows if "│" in r and r.split("│")[1].strip().endswith(("accuracy", ".acc", "f1_macro"))]
    assert all(r.count("%") == 2 for r in shares), compared

    # DVC's own table: the changed setting and the summary's figures, no truncated cell, within 120 columns
    shown = sh(repo, sys.executable, "-m", "dvc", "exp", "show", "--only-changed", "--drop", ".*/.*").stdout
    assert max(len(line.rstrip()) for line in shown.splitlines()) <= 120 and "…" not in shown, shown
    assert all(key in shown.splitlines()[1] for key in ("train.width", "val_acc", "test_acc", "served", "p50_ms"))
    for name, exp in exps.items():
        row = next(line for line in shown.splitlines() if name in line).split()
        assert exp["metrics"]["served"] in row and str(exp["params"]["train"]["width"]) in row, (row, exp)

    # --apply best: the chosen trial's settings land in params.yaml
    lab2prod(repo, "tune", "--apply", "best")
    front = [t for t in record["trials"] if t["number"] in record["pareto"]]
    best = max(front, key=lambda t: (t["values"]["val_accuracy"], -t["values"]["macs"]))
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["width"] == best["params"]["train.width"]


def test_unknown_key_in_the_space_fails_at_once_naming_it(tmp_path: Path) -> None:
    repo = tuned_project(tmp_path / "p", {"space": {"train.widht": {"choices": [4, 8]}}, "trials": 2})
    before = (repo / "params.yaml").read_bytes()
    proc = lab2prod(repo, "tune", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "train.widht" in out and "Traceback" not in out, out
    assert (repo / "params.yaml").read_bytes() == before
    assert not (repo / ".lab2prod/tune.db").exists()
    assert sh(repo, sys.executable, "-m", "dvc", "exp", "list", "--all-commits").stdout.strip() == ""


def test_a_failed_experiment_is_a_failed_trial_and_the_workspace_is_restored(tmp_path: Path) -> None:
    # passes the tuner's schema check (a timm name is checked where a network is built), fails in the train stage
    repo = tuned_project(tmp_path / "p", {"space": {"train.architecture": {"choices": ["no_such_net_xyz"]}}})
    before = (repo / "params.yaml").read_bytes()
    proc = lab2prod(repo, "tune", "--trials", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    (trial,) = json.loads((repo / "reports/tune/study.json").read_text())["trials"]
    assert trial["state"] == "FAIL" and "dvc exp run exited" in trial["fail_reason"], trial
    assert "no_such_net_xyz" in out, out  # the stage's own error reached the user
    assert (repo / "params.yaml").read_bytes() == before and not (repo / "dvc.lock").exists()
    assert experiments(repo) == {}


PRUNING = {"objectives": ["val_accuracy"], "pruner_startup_trials": 1, "pruner_warmup_epochs": 0, "trials": 2}


def study_with_an_earlier_trial(cfg: Any, project: Path, accuracy: float) -> Any:
    """The study of `cfg` (a TuneConfig with one choice key in its space) holding one finished trial, as if run
    earlier: validation accuracy `accuracy` at every epoch (the median a new trial is held to)."""
    import optuna

    from lab2prod.tune.study import open_study

    study = open_study(cfg, project)
    ((key, spec),) = cfg.space.items()
    study.add_trial(
        optuna.trial.create_trial(
            params={key: spec.choices[0]},
            distributions={key: optuna.distributions.CategoricalDistribution(spec.choices)},
            value=accuracy,
            intermediate_values=dict.fromkeys(range(50), accuracy),
        )
    )
    return study


def test_a_trial_behind_the_median_is_pruned_in_training_and_the_workspace_is_restored(lean_repo: Path) -> None:
    """A single-objective study prunes: the trial's train stage reports its first epoch, falls behind the median
    (a perfect earlier trial), stops; the tuner records it PRUNED and puts the workspace back."""
    import optuna

    from lab2prod.core.settings import load_params

    repo = lean_repo  # the DAG has run once: the trial's experiment reruns train only
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["tune"] = {**PRUNING, "space": {"train.seed": {"choices": [3]}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    commit(repo, "a study that prunes")
    study_with_an_earlier_trial(load_params(repo / "params.yaml").tune, repo, accuracy=1.0)
    kept = {f: (repo / f).read_bytes() for f in ("params.yaml", "dvc.lock", "artifacts/train/model.pt")}
    proc = lab2prod(repo, "tune", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "pruned after epoch 0" in out, out
    trial = optuna.load_study(study_name="lab2prod", storage=f"sqlite:///{repo}/.lab2prod/tune.db").trials[1]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["pruned_at_epoch"] == 0
    assert list(trial.intermediate_values) == [0] and trial.intermediate_values[0] < 1.0  # one epoch trained
    record = json.loads((repo / "reports/tune/study.json").read_text())["trials"][1]
    assert record["state"] == "PRUNED" and record["pruned_at_epoch"] == 0
    assert {f: (repo / f).read_bytes() for f in kept} == kept  # settings, lock and model as before the study
    assert experiments(repo) == {}  # a pruned trial leaves no experiment


def test_a_trial_ahead_of_the_median_reports_every_epoch_and_trains_to_the_end(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train stage's side, in process: a trial ahead of the earlier one (accuracy 0.0 at every epoch) reports
    each epoch's validation accuracy, the values of DVCLive's own curve, and trains every epoch."""
    import optuna

    from lab2prod.core.layout import Workspace
    from lab2prod.core.settings import validate_params
    from lab2prod.core.tune_settings import TuneConfig
    from lab2prod.tune.study import PRUNING_ENV, pruning_env
    from tasks.augment import augment
    from tasks.ingest import ingest
    from tasks.train import train
    from tests.conftest import TINY

    params = validate_params(
        {**TINY, "ingest": {**TINY["ingest"], "source": str(image_folder)}, "train": {**TINY["train"], "epochs": 3}}
    )
    ws = Workspace.under(tmp_path / "run")
    ingest(params.ingest, ws.prepared)
    augment(params.augment, ws)
    cfg = TuneConfig(**PRUNING, space={"train.seed": {"choices": [3]}}, storage=f"sqlite:///{tmp_path}/tune.db")
    trial = study_with_an_earlier_trial(cfg, tmp_path, accuracy=0.0).ask()
    monkeypatch.setenv(PRUNING_ENV, pruning_env(cfg, tmp_path, trial)[PRUNING_ENV])
    assert train(params, ws)["epochs"] == 3
    reported = optuna.load_study(study_name="lab2prod", storage=cfg.storage).trials[1].intermediate_values
    curve = (ws.train_metrics / "plots/metrics/val/acc.tsv").read_text().splitlines()[1:]
    assert reported == {int(row.split("\t")[0]): float(row.split("\t")[1]) for row in curve}
    assert sorted(reported) == [0, 1, 2]
