"""Hyperparameter tuning on the local twin: Optuna, with each trial the trainer's own entry point in a process.

Samplers follow Vertex's algorithms: TPE for the default (Bayesian), random,
and grid. `parallel_trial_count` trials run at once, each as
`python -m fleetops.training.trial ... --<param> <value>`; a trial that
crashes or reports no finite metric is recorded as failed and the study goes
on until `max_failed_trial_count` failures. The study lives in SQLite, so an
interrupted run resumes where it stopped without repeating finished trials.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetops.errors import UserError
from fleetops.names import model_id, segment_slug
from fleetops.spec import METRIC_GOALS, Algorithm, FleetSpec, ParameterKind, ParameterSpec, Scale
from fleetops.tuning.adapter import whole_numbers

SUCCEEDED, FAILED = "SUCCEEDED", "FAILED"


@dataclass
class Trial:
    """A trial in Vertex's shape: id, state, parameters, final metric."""

    trial_id: str
    state: str
    parameters: dict[str, Any]
    metric: str
    value: float | None = None
    seconds: float = 0.0
    start_time: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TuningResult:
    segment: str
    metric: str
    goal: str
    best_parameters: dict[str, Any]
    best_value: float | None
    trials: list[Trial] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trials": [t.to_dict() for t in self.trials]}


def tune_segment(
    spec: FleetSpec,
    spec_path: str | Path,
    dataset_path: str | Path,
    segment: str,
    work_dir: str | Path,
    log: Any = print,
) -> TuningResult:
    """Run (or resume) the study for one segment; return its trials and the best parameters."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuning = spec.tuning
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    goal = METRIC_GOALS[spec.task][spec.tuning_metric]
    study = optuna.create_study(
        study_name=study_name(spec, segment),
        storage=f"sqlite:///{work_dir / 'study.sqlite3'}",
        load_if_exists=True,
        direction=goal,
        sampler=_sampler(spec),
    )
    _fail_interrupted(study)
    distributions = {name: _distribution(p) for name, p in tuning.parameters.items()}
    if not study.trials and spec.tuning.algorithm is not Algorithm.GRID:
        # The spec's own settings go first, so tuning never ends below not tuning (on validation).
        defaults = _defaults(spec)
        if defaults is not None:
            study.enqueue_trial(defaults)
    threads = max(1, (os.cpu_count() or 1) // tuning.parallel_trial_count)
    running: dict[Future[Trial], Any] = {}
    with ThreadPoolExecutor(max_workers=tuning.parallel_trial_count, thread_name_prefix="trial") as pool:
        while True:
            finished = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
            failed = sum(t.state == optuna.trial.TrialState.FAIL for t in finished)
            over_budget = tuning.max_failed_trial_count and failed > tuning.max_failed_trial_count
            while (
                not over_budget
                and len(running) < tuning.parallel_trial_count
                and len(finished) + len(running) < tuning.max_trial_count
                and not _grid_exhausted(study, spec)
            ):
                trial = study.ask(distributions)
                parameters = {name: _value(tuning.parameters[name], raw) for name, raw in trial.params.items()}
                trial_dir = work_dir / f"trial-{trial.number}"
                future = pool.submit(
                    _run_trial, spec, spec_path, dataset_path, segment, trial_dir, trial.number, parameters, threads
                )
                running[future] = trial
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                trial, record = running.pop(future), future.result()
                for key, value in record.to_dict().items():
                    trial.set_user_attr(key, value)
                if record.state == SUCCEEDED:
                    _tell(study, trial, values=record.value)
                else:
                    _tell(study, trial, state=optuna.trial.TrialState.FAIL)
                log(
                    f"trial {record.trial_id} {record.state} {record.metric}={record.value} {record.parameters} "
                    f"in {record.seconds:.1f}s{' (' + record.error + ')' if record.error else ''}"
                )
    trials = [_record(t) for t in study.trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    failures = [t for t in trials if t.state == FAILED]
    if tuning.max_failed_trial_count and len(failures) > tuning.max_failed_trial_count:
        reasons = "; ".join(f"trial {t.trial_id}: {t.error}" for t in failures[:5])
        raise UserError(
            f"tuning {segment!r} stopped: {len(failures)} trials failed, over max_failed_trial_count "
            f"{tuning.max_failed_trial_count} ({reasons})"
        )
    succeeded = [t for t in trials if t.state == SUCCEEDED]
    if not succeeded:
        raise UserError(f"tuning {segment!r}: no trial succeeded ({'; '.join(t.error for t in failures[:5])})")
    best = max(succeeded, key=lambda t: t.value if goal == "maximize" else -t.value)
    return TuningResult(segment, spec.tuning_metric, goal, best.parameters, best.value, trials)


def tune_in_folder(
    spec: FleetSpec, dataset_path: str | Path, segment: str, work_dir: str | Path, log: Any = print
) -> dict[str, Any]:
    """Run (or resume) the segment's study in `work_dir/<segment slug>/`; its tuning record (`Platform.tune`).

    The spec the trials read is written there too: a trial is the trainer run as a process.
    """
    folder = Path(work_dir) / segment_slug(segment)
    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / "spec.json"
    spec_file.write_text(spec.to_json())
    result = tune_segment(spec, spec_file, dataset_path, segment, folder, log)
    return result.to_dict() | {"scope": spec.tuning.scope}


def trainer_flags(parameters: dict[str, Any]) -> list[str]:
    """Hyperparameters as the trainer's command-line flags (what Vertex passes to a trial, too)."""
    flags = []
    for name, value in sorted(whole_numbers(parameters).items()):
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def _run_trial(
    spec: FleetSpec,
    spec_path: str | Path,
    dataset_path: str | Path,
    segment: str,
    trial_dir: Path,
    number: int,
    parameters: dict[str, Any],
    threads: int,
) -> Trial:
    command = [
        sys.executable,
        "-m",
        "fleetops.training.trial",
        "--spec",
        str(spec_path),
        "--data",
        str(dataset_path),
        "--segment",
        segment,
        "--output-dir",
        str(trial_dir),
        *trainer_flags(parameters),
    ]
    environment = {**os.environ, "FLEETOPS_TF_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
    started, start_time = time.perf_counter(), datetime.now(UTC).isoformat(timespec="seconds")
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - started
    record = Trial(str(number + 1), FAILED, parameters, spec.tuning_metric, None, seconds, start_time)
    if done.returncode != 0:
        record.error = (done.stderr.strip().splitlines() or ["exited with " + str(done.returncode)])[-1][:300]
        return record
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
        value = report["validation_metrics"].get(spec.tuning_metric)
    except (json.JSONDecodeError, IndexError, KeyError) as exc:
        record.error = f"the trainer's report could not be read: {exc}"
        return record
    if value is None or not math.isfinite(value):
        record.error = f"{spec.tuning_metric} is {value} (not a finite number)"
        return record
    record.state, record.value = SUCCEEDED, float(value)
    return record


def _sampler(spec: FleetSpec) -> Any:
    import optuna

    seed = spec.training.seed
    if spec.tuning.algorithm is Algorithm.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.tuning.algorithm is Algorithm.GRID:
        return optuna.samplers.GridSampler({n: _grid(p) for n, p in spec.tuning.parameters.items()}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, spec.tuning.max_trial_count))


def _distribution(parameter: ParameterSpec) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if parameter.type is ParameterKind.DOUBLE:
        return FloatDistribution(parameter.min, parameter.max, log=parameter.scale is not Scale.LINEAR)
    if parameter.type is ParameterKind.INTEGER:
        return IntDistribution(int(parameter.min), int(parameter.max), log=parameter.scale is not Scale.LINEAR)
    return CategoricalDistribution(list(parameter.values))


def _value(parameter: ParameterSpec, raw: Any) -> Any:
    """Reverse-log: the sampler works on a log scale, mirrored so values crowd near the maximum (as Vertex)."""
    if parameter.scale is Scale.REVERSE_LOG and parameter.type is ParameterKind.DOUBLE:
        return parameter.max + parameter.min - raw
    if parameter.scale is Scale.REVERSE_LOG and parameter.type is ParameterKind.INTEGER:
        return int(parameter.max + parameter.min - raw)
    return raw


def _defaults(spec: FleetSpec) -> dict[str, Any] | None:
    """The spec's training values for the tuned parameters, if every one of them lies in its search space."""
    current = spec.training.model_dump()
    current["hidden_units"] = ",".join(map(str, current["hidden_units"]))
    current["architecture"] = spec.architectures[0].value if len(spec.architectures) == 1 else None
    defaults = {}
    for name, parameter in spec.tuning.parameters.items():
        value = current.get(name)
        if value is None:
            return None
        if parameter.type in (ParameterKind.DOUBLE, ParameterKind.INTEGER):
            if not parameter.min <= value <= parameter.max or parameter.scale is Scale.REVERSE_LOG:
                return None
        elif value not in parameter.values:
            return None
        defaults[name] = value
    return defaults


def _grid(parameter: ParameterSpec) -> list[Any]:
    if parameter.type is ParameterKind.INTEGER:
        return list(range(int(parameter.min), int(parameter.max) + 1))
    return list(parameter.values)


def _grid_exhausted(study: Any, spec: FleetSpec) -> bool:
    if spec.tuning.algorithm is not Algorithm.GRID:
        return False
    size = math.prod(len(_grid(p)) for p in spec.tuning.parameters.values())
    return len(study.trials) >= size


def _tell(study: Any, trial: Any, **outcome: Any) -> None:
    """study.tell; GridSampler then asks to stop an optimize() loop once the grid is used up, which
    raises under ask/tell. This loop checks the grid itself (_grid_exhausted), so that request is moot."""
    try:
        study.tell(trial, **outcome)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def _fail_interrupted(study: Any) -> None:
    """Trials left RUNNING by an interrupted run never finished: close them (not as failures) to run anew."""
    import optuna

    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def study_name(spec: FleetSpec, segment: str) -> str:
    """What makes two runs the same study: the spec without its trial budget (raising it resumes)."""
    import hashlib

    content = spec.model_dump(mode="json")
    for budget in ("max_trial_count", "parallel_trial_count", "max_failed_trial_count"):
        content["tuning"].pop(budget)
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
    return f"{model_id(spec.name, segment)}-{digest}"


def _record(trial: Any) -> Trial:
    attrs = trial.user_attrs
    if "trial_id" in attrs:
        return Trial(**{k: attrs[k] for k in Trial.__dataclass_fields__})
    return Trial(str(trial.number + 1), FAILED, dict(trial.params), "", None, 0.0, "", "interrupted before it finished")
