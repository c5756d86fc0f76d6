"""The fleet spec: one YAML file that declares a fleet of models.

`load_spec` / `parse_spec` validate everything up front and raise one
`SpecError` listing every problem (field path, the value given, what is
allowed), so a user fixes a spec in one round instead of one error per run.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetops.errors import SpecError
from fleetops.evaluation import fairness

FLEET_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
# Vertex label values: at most 64 lowercase letters, digits, '_' and '-'.
LABEL_PATTERN = r"^[a-z0-9_-]{0,64}$"
LABEL_KEY_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
# Vertex resource ids we choose (endpoints, deployment resource pools): up to 63 of [a-z0-9-], from a letter.
RESOURCE_ID_PATTERN = r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$"
# Vertex co-hosts (deployment resource pools) only models served by its prebuilt TensorFlow (GA) or
# PyTorch (preview) containers. fleetops exports a SavedModel for the TensorFlow one: the newest
# CPU image that Vertex lists and that the google-cloud-aiplatform 2.7 SDK knows is 2.15.
PREBUILT_TF_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
PREBUILT_TF_IMAGE_PATTERN = r"^(us|europe|asia)-docker\.pkg\.dev/vertex-ai/prediction/tf2-cpu\.2-\d+:latest$"
# Machine families whose machines come with GPUs attached (the pool's TensorFlow image is the CPU one).
ACCELERATOR_MACHINE_PREFIXES = ("a2-", "a3-", "a4-", "g2-", "g4-")


class Task(StrEnum):
    BINARY = "binary_classification"
    MULTICLASS = "multiclass_classification"
    REGRESSION = "regression"

    @property
    def is_classification(self) -> bool:
        return self is not Task.REGRESSION


class Architecture(StrEnum):
    """What a segment's model is.

    linear, dnn: Keras models (preprocessing inside). gbt: gradient-boosted trees (XGBoost). ensemble:
    a weighted average of the other architectures' models of the same segment, weights fitted on the
    validation split.
    """

    LINEAR = "linear"
    DNN = "dnn"
    GBT = "gbt"
    ENSEMBLE = "ensemble"

    @property
    def is_keras(self) -> bool:
        return self in (Architecture.LINEAR, Architecture.DNN)


class Candidate(StrEnum):
    """Whose model a segment may serve: its own (segment) or the fleet-wide one (global, segment as a feature)."""

    SEGMENT = "segment"
    GLOBAL = "global"


# Vertex evaluation metric names, and whether bigger is better.
METRIC_GOALS: dict[Task, dict[str, str]] = {
    Task.BINARY: {"auRoc": "maximize", "auPrc": "maximize", "logLoss": "minimize", "accuracy": "maximize"},
    Task.MULTICLASS: {"auRoc": "maximize", "auPrc": "maximize", "logLoss": "minimize", "accuracy": "maximize"},
    Task.REGRESSION: {
        "rootMeanSquaredError": "minimize",
        "meanAbsoluteError": "minimize",
        "rSquared": "maximize",
    },
}
DEFAULT_PRIMARY_METRIC = {Task.BINARY: "auRoc", Task.MULTICLASS: "logLoss", Task.REGRESSION: "rootMeanSquaredError"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitFractions(_Strict):
    train: float = Field(0.7, gt=0, lt=1)
    validation: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitFractions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1.0, got {total:g}")
        return self


class DataSpec(_Strict):
    source: str = Field(description="A CSV/Parquet path, a SQL query, or bq://project.dataset.table.")
    segment_column: str | None = Field(None, description="One model per value of this column.")
    segments: list[str] | None = Field(None, description="Train only these segments.")
    split_key: str | None = Field(None, description="Column hashed for the split; default: the whole row.")
    split: SplitFractions = SplitFractions()
    min_rows_per_segment: int = Field(50, ge=1, description="A segment with fewer rows gets the failure policy.")

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a file, a SQL query or a bq:// table")
        return v


class FeaturesSpec(_Strict):
    numeric: list[str] = []
    categorical: list[str] = []

    @model_validator(mode="after")
    def _distinct(self) -> FeaturesSpec:
        if not self.numeric and not self.categorical:
            raise ValueError("declare at least one numeric or categorical feature")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"features {both} are listed as both numeric and categorical")
        for kind, names in (("numeric", self.numeric), ("categorical", self.categorical)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} features {dupes} are listed more than once")
        return self

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class TrainingSpec(_Strict):
    epochs: int = Field(40, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(0.01, gt=0, le=1)
    hidden_units: list[int] = [32, 16]
    dropout: float = Field(0.1, ge=0, lt=1)
    early_stopping_patience: int = Field(4, ge=1)
    seed: int = 42
    warm_start: str = Field(
        "none",
        pattern="^(none|global)$",
        description="global: fine-tune each segment from a model trained on every segment's rows.",
    )
    trainer: str = Field(
        "packed",
        pattern="^(packed|per_segment)$",
        description="packed: every segment of a shard in one graph; per_segment: one Keras fit per segment.",
    )
    candidates: list[Candidate] = Field(
        [Candidate.SEGMENT],
        description="global: each segment also scores the fleet-wide model (trained once on every segment's "
        "train rows, the segment as a feature) on its validation rows and keeps whichever wins.",
    )
    # Gradient-boosted trees (architecture gbt, XGBoost). Boosting's shrinkage is not Adam's step size,
    # hence its own learning rate.
    num_trees: int = Field(500, ge=1, le=5000, description="gbt: boosting rounds at most (early stopping cuts).")
    # Depth 4: on the sample fleet's 350-row segments, depth 6 scored a lower test auRoc (0.770 vs 0.776)
    # and trained 20% slower; deeper trees need more rows than a segment usually has.
    max_depth: int = Field(4, ge=1, le=16, description="gbt: the deepest a tree grows.")
    tree_learning_rate: float = Field(0.1, gt=0, le=1, description="gbt: shrinkage of each tree's contribution.")
    min_child_weight: float = Field(1.0, ge=0, le=1000, description="gbt: the least hessian weight in a leaf.")
    subsample: float = Field(1.0, gt=0, le=1, description="gbt: share of train rows each tree samples.")
    l2_regularization: float = Field(1.0, ge=0, le=1000, description="gbt: L2 penalty on leaf weights.")
    early_stopping_rounds: int = Field(
        10,  # scikit-learn's HistGradientBoosting waits 10 too
        ge=1,
        le=1000,
        description="gbt: stop once this many rounds passed without a better validation loss.",
    )

    @field_validator("candidates")
    @classmethod
    def _own_model_competes(cls, v: list[Candidate]) -> list[Candidate]:
        if Candidate.SEGMENT not in v:
            raise ValueError("must include 'segment' (each segment's own model); add 'global' to let it compete")
        if len(set(v)) != len(v):
            raise ValueError(f"lists a candidate more than once: {[c.value for c in v]}")
        return v

    @field_validator("hidden_units")
    @classmethod
    def _positive_units(cls, v: list[int]) -> list[int]:
        if not v or any(u < 1 for u in v):
            raise ValueError(f"must be a non-empty list of positive integers, got {v}")
        return v


class ParameterKind(StrEnum):
    DOUBLE = "double"
    INTEGER = "integer"
    CATEGORICAL = "categorical"
    DISCRETE = "discrete"


class Scale(StrEnum):
    LINEAR = "linear"
    LOG = "log"
    REVERSE_LOG = "reverse_log"


class ParameterSpec(_Strict):
    """One hyperparameter, with Vertex's kinds: double/integer ranges, categorical strings, discrete numbers."""

    type: ParameterKind
    min: float | None = None
    max: float | None = None
    scale: Scale = Scale.LINEAR
    values: list[str] | list[float] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ParameterSpec:
        if self.type in (ParameterKind.DOUBLE, ParameterKind.INTEGER):
            if self.min is None or self.max is None or self.values is not None:
                raise ValueError(f"a {self.type.value} parameter needs min and max (and no values)")
            if self.min >= self.max:
                raise ValueError(f"min {self.min:g} must be below max {self.max:g}")
            if self.scale is not Scale.LINEAR and self.min <= 0:
                raise ValueError(f"a {self.scale.value} scale needs min > 0, got {self.min:g}")
            if self.type is ParameterKind.INTEGER and (self.min != int(self.min) or self.max != int(self.max)):
                raise ValueError(f"an integer parameter needs whole min and max, got {self.min:g}..{self.max:g}")
        else:
            if not self.values or self.min is not None or self.max is not None:
                raise ValueError(f"a {self.type.value} parameter needs a non-empty list of values (and no min/max)")
            wanted = str if self.type is ParameterKind.CATEGORICAL else (int, float)
            wrong = [v for v in self.values if not isinstance(v, wanted) or isinstance(v, bool)]
            if wrong:
                kind = "strings" if self.type is ParameterKind.CATEGORICAL else "numbers"
                raise ValueError(f"{self.type.value} values must be {kind}, got {wrong}")
        return self


class Algorithm(StrEnum):
    DEFAULT = "default"  # Bayesian optimisation (Vertex); TPE locally
    GRID = "grid"
    RANDOM = "random"


# Hyperparameters a trial may set: the trainer's flags.
TUNABLE = (
    "architecture",
    "epochs",
    "batch_size",
    "learning_rate",
    "hidden_units",
    "dropout",
    "early_stopping_patience",
    "num_trees",
    "max_depth",
    "tree_learning_rate",
    "min_child_weight",
    "subsample",
    "l2_regularization",
    "early_stopping_rounds",
)


class TuningSpec(_Strict):
    enabled: bool = False
    scope: str = Field("per_segment", pattern="^(per_segment|fleet)$")
    metric: str | None = Field(None, description="Default: evaluation.primary_metric.")
    algorithm: Algorithm = Algorithm.DEFAULT
    max_trial_count: int = Field(8, ge=1, le=1000)
    parallel_trial_count: int = Field(2, ge=1, le=100)
    max_failed_trial_count: int = Field(2, ge=0)
    parameters: dict[str, ParameterSpec] = {}

    @model_validator(mode="after")
    def _rules(self) -> TuningSpec:
        unknown = sorted(set(self.parameters) - set(TUNABLE))
        if unknown:
            raise ValueError(f"parameters {unknown} are not trainer flags; tunable: {list(TUNABLE)}")
        if self.algorithm is Algorithm.GRID:
            continuous = sorted(n for n, p in self.parameters.items() if p.type is ParameterKind.DOUBLE)
            if continuous:
                raise ValueError(
                    f"grid search cannot enumerate double parameter(s) {continuous}: Vertex allows only "
                    "integer, categorical and discrete parameters with the grid algorithm"
                )
        if self.enabled and not self.parameters:
            raise ValueError("tuning is enabled but declares no parameters")
        if self.parallel_trial_count > self.max_trial_count:
            raise ValueError(
                f"parallel_trial_count {self.parallel_trial_count} exceeds max_trial_count {self.max_trial_count}"
            )
        return self


class FairnessGate(_Strict):
    """A bias limit on promotion: a model whose `metric` on any value of `slice` (against the rest of the
    test rows) has an absolute value above `max_abs` does not take the champion alias."""

    slice: str = Field(description="A categorical feature: the sensitive column whose values are compared.")
    metric: str = Field(description="A fairness metric (fleetops.evaluation.fairness.METRICS).")
    max_abs: float = Field(ge=0, description="The largest |slice minus the rest| allowed (strictly above breaks it).")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in fairness.METRICS:
            raise ValueError(f"unknown fairness metric; allowed: {', '.join(fairness.METRICS)}")
        return v


class EvaluationSpec(_Strict):
    primary_metric: str | None = None
    promote_if_better_by: float = Field(0.0, ge=0)
    slice_columns: list[str] = []
    fairness: list[FairnessGate] = Field(
        [],
        description="Bias gates on promotion. Fairness metrics are reported for slice_columns and these slices.",
    )

    @property
    def fairness_columns(self) -> list[str]:
        """The sensitive columns fairness is reported for: slice_columns, then each gate's slice."""
        return list(dict.fromkeys([*self.slice_columns, *(gate.slice for gate in self.fairness)]))


class RegistrySpec(_Strict):
    labels: dict[str, str] = {}
    serving_image: str | None = None

    @field_validator("labels")
    @classmethod
    def _vertex_labels(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [
            f"{k}={val}"
            for k, val in v.items()
            if not re.fullmatch(LABEL_KEY_PATTERN, k) or not re.fullmatch(LABEL_PATTERN, val)
        ]
        if bad:
            raise ValueError(
                f"labels {bad} are invalid: keys and values are at most 64 lowercase letters, digits, '_' or '-'"
            )
        return v


def is_prebuilt_tf_image(image: str | None) -> bool:
    """Whether `image` is one of Vertex's prebuilt TensorFlow CPU prediction images (the ones a pool co-hosts)."""
    return bool(image) and re.fullmatch(PREBUILT_TF_IMAGE_PATTERN, image) is not None


class Cohosting(StrEnum):
    """Where a fleet's deployed models run.

    none: each deployed model gets its own nodes (machine type, replicas), as Vertex does by default.
    pool: the fleet's models share one set of nodes, a Vertex deployment resource pool sized by the
        machine type and replicas below; each segment keeps its own endpoint, so canary, promote and
        rollback stay per segment. Vertex co-hosts only models served by its prebuilt TensorFlow
        container, so the models are registered with that container and a SavedModel export, and
        Vertex serves no explanations for them.
    """

    NONE = "none"
    POOL = "pool"


class ServingSpec(_Strict):
    deploy: bool = Field(True, description="Deploy each new champion to its endpoint at the end of training.")
    canary_percent: int = Field(10, ge=1, le=100, description="Traffic a new champion gets next to the old one.")
    machine_type: str = "n1-standard-2"
    min_replica_count: int = Field(1, ge=1)
    max_replica_count: int = Field(1, ge=1)
    autoscaling_target_cpu: int | None = Field(None, ge=1, le=100)
    request_logging_rate: float = Field(1.0, ge=0, le=1, description="Share of requests logged for monitoring.")
    cohosting: Cohosting = Field(
        Cohosting.NONE,
        description="pool: the fleet's models share the nodes above (a Vertex deployment resource pool).",
    )
    pool_id: str | None = Field(
        None,
        pattern=RESOURCE_ID_PATTERN,
        description="The deployment resource pool's id with cohosting: pool (default: '<fleet>-pool').",
    )
    runtime: str = Field(
        "litert",
        pattern="^(keras|litert|litert_quantized)$",
        description="keras: serve the Keras model; litert: its float32 LiteRT flatbuffer where that agrees with it "
        "(else Keras); litert_quantized: also the int8 flatbuffer where its validation metric drops by at most "
        "quantized_max_metric_drop. These choose among a Keras model's (linear, dnn) runtimes: gbt models score "
        "through their XGBoost booster, ensembles through their members. `:explain` explains Keras models with "
        "their Keras model (integrated gradients, whichever runtime serves `:predict`), gbt with TreeSHAP, "
        "ensembles through their members.",
    )
    quantized_max_metric_drop: float = Field(
        0.002, ge=0, description="How much worse the primary metric may be on validation for int8 to be served."
    )

    @model_validator(mode="after")
    def _replicas(self) -> ServingSpec:
        if self.max_replica_count < self.min_replica_count:
            raise ValueError(
                f"max_replica_count {self.max_replica_count} is below min_replica_count {self.min_replica_count}"
            )
        if self.pool_id is not None and self.cohosting is not Cohosting.POOL:
            raise ValueError(f"pool_id {self.pool_id!r} is set but cohosting is {self.cohosting.value!r}, not 'pool'")
        if self.cohosting is Cohosting.POOL and self.machine_type.startswith(ACCELERATOR_MACHINE_PREFIXES):
            raise ValueError(
                f"machine_type {self.machine_type!r} comes with GPUs, but cohosting: pool serves the models with "
                f"Vertex's CPU TensorFlow container ({PREBUILT_TF_IMAGE}); choose a machine type without "
                "accelerators (e.g. n1-standard-4) or cohosting: none"
            )
        return self


class MonitoringPolicy(StrEnum):
    FIXED = "fixed"
    CALIBRATED = "calibrated"


class MonitoringSpec(_Strict):
    skew_threshold: float = Field(0.3, gt=0, le=1, description="Alert when a feature's skew is above this.")
    drift_threshold: float = Field(0.3, gt=0, le=1, description="Alert when a feature's drift is above this.")
    feature_thresholds: dict[str, float] = Field({}, description="Per-feature thresholds (skew and drift).")
    window_hours: float = Field(24.0, gt=0, description="The serving window: the last N hours of the request log.")
    min_rows: int = Field(30, ge=1, description="A window with fewer logged rows is reported, not judged.")
    interval_hours: int = Field(1, ge=1, le=24 * 7, description="How often Vertex-managed monitoring runs.")
    sampling_rate: float = Field(1.0, gt=0, le=1, description="Share of requests Vertex-managed monitoring samples.")
    alert_emails: list[str] = []
    webhook: str | None = Field(None, description="POST each alert as JSON to this URL.")
    policy: MonitoringPolicy = Field(
        MonitoringPolicy.FIXED,
        description="fixed: Vertex's rule, a distance above its threshold; calibrated: above its own no-drift "
        "range at the window's size, with false discoveries controlled across the fleet.",
    )
    alpha: float = Field(0.01, gt=0, lt=0.5, description="calibrated: a test's threshold is the 1 - alpha quantile.")
    false_discovery_rate: float = Field(
        0.05, gt=0, lt=1, description="calibrated: Benjamini-Hochberg level across every test of the run."
    )
    resamples: int = Field(1000, ge=99, le=100_000, description="calibrated: bootstrap resamples per test.")
    seed: int = Field(0, ge=0, description="calibrated: the resamples' seed.")

    @field_validator("feature_thresholds")
    @classmethod
    def _in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: t for k, t in v.items() if not 0 < t <= 1}
        if bad:
            raise ValueError(f"thresholds {bad} must be in (0, 1]")
        return v


class ShardingSpec(_Strict):
    """How segments are grouped into tasks: by default as few tasks as keep the engine busy."""

    models_per_task: int | None = Field(None, ge=1, description="A fixed shard size; default: sized by work.")
    concurrent_tasks: int = Field(2, ge=1, le=100, description="Tasks the engine runs at once (kfp.local: 2).")
    max_models_per_task: int = Field(500, ge=1, description="The most segments one task trains.")


class FailurePolicy(StrEnum):
    SKIP = "skip"
    GLOBAL = "global"
    FAIL = "fail"


class SegmentFailuresSpec(_Strict):
    """What happens to a segment that is too small, fails validation or fails training."""

    policy: FailurePolicy = Field(
        FailurePolicy.SKIP,
        description="skip: record the reason, train the rest; global: serve the fleet's global model; fail the run.",
    )
    max_failed_fraction: float = Field(0.1, ge=0, le=1, description="The run fails when more segments fail.")

    def too_many(self, lost: int, total: int) -> bool:
        """The run's rule, before training (skipped) and after it (skipped or failed): more than the fraction."""
        return total > 0 and lost > self.max_failed_fraction * total


class FleetSpec(_Strict):
    name: str = Field(pattern=FLEET_NAME_PATTERN)
    task: Task
    label: str
    data: DataSpec
    features: FeaturesSpec
    architectures: list[Architecture] = [Architecture.DNN]
    training: TrainingSpec = TrainingSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    tuning: TuningSpec = TuningSpec()
    registry: RegistrySpec = RegistrySpec()
    serving: ServingSpec = ServingSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    sharding: ShardingSpec = ShardingSpec()
    segment_failures: SegmentFailuresSpec = SegmentFailuresSpec()

    @model_validator(mode="after")
    def _cross_field(self) -> FleetSpec:
        problems = []
        if self.label in self.features.all:
            problems.append(f"label '{self.label}' is also listed as a feature")
        seg = self.data.segment_column
        if seg and seg in self.features.all:
            problems.append(f"segment_column '{seg}' is also listed as a feature")
        if seg and seg == self.label:
            problems.append(f"segment_column '{seg}' is the label")
        if not self.architectures:
            problems.append("architectures is empty: choose from " + ", ".join(a.value for a in Architecture))
        if len(set(self.architectures)) != len(self.architectures):
            problems.append(f"architectures lists one more than once: {[a.value for a in self.architectures]}")
        members = [a for a in self.architectures if a is not Architecture.ENSEMBLE]
        if Architecture.ENSEMBLE in self.architectures and len(members) < 2:
            problems.append(
                "architectures: ensemble combines the other architectures' models, so it needs at least two "
                f"of linear, dnn, gbt beside it (got {[a.value for a in self.architectures]})"
            )
        not_pooled = [a.value for a in self.architectures if not a.is_keras]
        if Candidate.GLOBAL in self.training.candidates:
            not_pooled.append("the global candidate (training.candidates: global)")
        if self.serving.cohosting is Cohosting.POOL and not_pooled:
            problems.append(
                f"architectures {not_pooled} cannot be co-hosted (serving.cohosting: pool): Vertex co-hosts only "
                "models its prebuilt TensorFlow container serves; use linear and dnn, or serving.cohosting: none"
            )
        if Candidate.GLOBAL in self.training.candidates and not seg:
            problems.append(
                "training.candidates: global trains one model with the segment as a feature, so it needs "
                "data.segment_column"
            )
        problems += _tuning_ranges(self.tuning)
        metric = self.evaluation.primary_metric
        if metric is not None and metric not in METRIC_GOALS[self.task]:
            allowed = ", ".join(METRIC_GOALS[self.task])
            problems.append(
                f"evaluation.primary_metric '{metric}' is not a {self.task.value} metric; allowed: {allowed}"
            )
        tuning_metric = self.tuning.metric
        if tuning_metric is not None and tuning_metric not in METRIC_GOALS[self.task]:
            allowed = ", ".join(METRIC_GOALS[self.task])
            problems.append(f"tuning.metric '{tuning_metric}' is not a {self.task.value} metric; allowed: {allowed}")
        unknown_thresholds = sorted(set(self.monitoring.feature_thresholds) - set(self.features.all))
        if unknown_thresholds:
            problems.append(f"monitoring.feature_thresholds names {unknown_thresholds}, which are not features")
        unknown_slices = [c for c in self.evaluation.slice_columns if c not in self.features.categorical]
        if unknown_slices:
            problems.append(f"evaluation.slice_columns {unknown_slices} must be categorical features")
        for index, gate in enumerate(self.evaluation.fairness):
            where = f"evaluation.fairness.{index}"
            if gate.slice not in self.features.categorical:
                problems.append(
                    f"{where}.slice: {gate.slice!r} must be a categorical feature "
                    f"(categorical: {self.features.categorical})"
                )
            if gate.metric not in fairness.DEFINED[self.task.value]:
                problems.append(
                    f"{where}.metric: {gate.metric} is never defined for a {self.task.value} model; allowed: "
                    + ", ".join(fairness.DEFINED[self.task.value])
                )
        image = self.registry.serving_image
        if self.serving.cohosting is Cohosting.POOL and image and not is_prebuilt_tf_image(image):
            problems.append(
                f"registry.serving_image {image!r} is a custom container, and Vertex co-hosts "
                "(serving.cohosting: pool) only models served by its prebuilt TensorFlow container: leave "
                f"registry.serving_image unset (fleetops then uses {PREBUILT_TF_IMAGE}), name another prebuilt "
                "tf2-cpu image, or set serving.cohosting: none"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def primary_metric(self) -> str:
        return self.evaluation.primary_metric or DEFAULT_PRIMARY_METRIC[self.task]

    @property
    def metric_goal(self) -> str:
        return METRIC_GOALS[self.task][self.primary_metric]

    @property
    def tuning_metric(self) -> str:
        return self.tuning.metric or self.primary_metric

    @property
    def serving_pool(self) -> str | None:
        """The id of the deployment resource pool the fleet's models share (cohosting: pool), else None."""
        if self.serving.cohosting is not Cohosting.POOL:
            return None
        return self.serving.pool_id or f"{self.name}-pool"

    def fingerprint(self) -> str:
        """A short stable hash of the spec, recorded in every model's lineage."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """The full spec, defaults included: what a pipeline run receives as its parameter."""
        return self.model_dump_json()


def _tuning_ranges(tuning: TuningSpec) -> list[str]:
    """Search spaces reaching outside what a training setting allows (a trial would fail on its flag)."""
    problems = []
    for name, parameter in tuning.parameters.items():
        if name == "architecture":
            # A trial trains one architecture; an ensemble is made of several, so it is not one to tune.
            allowed = {a.value for a in Architecture if a is not Architecture.ENSEMBLE}
            wrong = [v for v in parameter.values or [] if v not in allowed]
            if wrong or parameter.type is not ParameterKind.CATEGORICAL:
                problems.append(
                    f"tuning.parameters.architecture: must be categorical with values among {sorted(allowed)} "
                    f"(got {parameter.type.value} {wrong or parameter.values}); an ensemble combines the "
                    "others' models: tune their settings and list ensemble in architectures"
                )
            continue
        field = TrainingSpec.model_fields.get(name)
        if field is None or name == "hidden_units":
            continue
        points = [parameter.min, parameter.max] if parameter.values is None else list(parameter.values)
        for value in points:
            try:
                TrainingSpec.model_validate({name: value})
            except ValidationError as exc:
                message = exc.errors()[0]["msg"]
                problems.append(f"tuning.parameters.{name}: {value!r} is outside what {name} allows ({message})")
                break
    return problems


def parse_spec(obj: Any, source: str = "fleet spec") -> FleetSpec:
    """Validate a spec given as a dict or YAML/JSON text; raise `SpecError` listing every problem."""
    if isinstance(obj, FleetSpec):
        return obj
    if isinstance(obj, str):
        try:
            if duplicates := duplicate_keys(obj):
                raise SpecError(duplicates, source)
            obj = yaml.safe_load(obj)
        except yaml.YAMLError as exc:
            raise SpecError([f"not valid YAML: {exc}"], source) from None
    if not isinstance(obj, dict):
        raise SpecError([f"must be a mapping of fields, got {type(obj).__name__}: {obj!r:.80}"], source)
    try:
        return FleetSpec.model_validate(obj)
    except ValidationError as exc:
        raise SpecError([describe_error(err) for err in exc.errors()], source) from None


def duplicate_keys(text: str) -> list[str]:
    """Every key given twice in one mapping of a YAML document, with its path and lines.

    YAML loaders keep the last value silently, so `epochs: 5` and a later `epochs: 50` in the same
    block would train for 50 without a word; a spec with a repeated key is refused instead.
    """
    problems: list[str] = []
    seen: set[int] = set()

    def walk(node: yaml.Node, path: str) -> None:
        if id(node) in seen:  # an alias: already checked where its anchor is
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    line, identity = key.start_mark.line + 1, (key.tag, key.value)
                    where = f"{path}.{key.value}" if path else str(key.value)
                    if identity in first:
                        problems.append(f"{where}: given twice (lines {first[identity]} and {line}); keep one of them")
                    else:
                        first[identity] = line
                    walk(value, where)
                else:
                    walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{path}.{index}" if path else str(index))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "")
    return problems


def load_spec(path: str | Path) -> FleetSpec:
    """Read and validate a fleet spec file; a relative data file is taken relative to the spec's folder."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"file not found: {path}"], str(path))
    spec = parse_spec(path.read_text(), source=str(path))
    source = spec.data.source
    if source.lower().endswith((".csv", ".parquet", ".pq")) and "://" not in source and not Path(source).is_absolute():
        absolute = str((path.parent / source).resolve())
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": absolute})})
    return spec


def describe_error(err: dict[str, Any]) -> str:
    """One pydantic error as `field: what is wrong (got value)`."""
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown field (value {given!r:.60}); check the spelling against the documented fields"
    if kind == "missing":
        return f"{where}: required field is missing"
    message = err["msg"].removeprefix("Value error, ")
    if isinstance(given, dict):
        return f"{where}: {message}"
    return f"{where}: {message} (got {given!r:.80})"
