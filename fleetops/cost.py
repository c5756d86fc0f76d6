"""What a fleet costs on Vertex AI: serving per month for each way of hosting it, and a training run.

Serving is priced three ways on the spec's `serving.machine_type`, each a whole number of nodes
billed for every hour of the month (`hours_per_month` of the price table):

- dedicated endpoints: one endpoint per model (what `deploy_champions` does), each with
  `min_replica_count` nodes, more where its traffic needs them (up to `max_replica_count`).
  A node holds one serving process and its model.
- co-hosted pool (a Vertex DeploymentResourcePool): the models share nodes. Every node of a pool
  holds all of the pool's models (Vertex places a pool's deployments "within a single VM"), so
  a fleet whose models do not fit one node's memory needs several pools; nodes =
  max(pools x min replicas, ceil(requests/s / requests/s per node)).
- one fleet endpoint: our custom container routing each request to its segment's model, with an
  LRU cache of loaded models: nodes = max(min replicas, ceil(requests/s / requests/s per node)),
  and the cache's working set (the models requested in a window) must fit a node's memory.

An option fits when its memory fits the machine's usable memory and its traffic fits
`max_replica_count` nodes. The report names the option the spec chose (`serving.cohosting`) and
the cheapest that fits; an option that does not fit names the cheapest machine type it fits on.

A training run is priced from its measured task durations (a local run's `run.log`) at the
machine each task gets on Vertex AI Pipelines: the train tasks the machine their
`train_cpu_limit` / `train_memory_limit` map to (the cheapest machine type of the price table
with at least that many vCPUs and that much memory, with a training price), the other tasks
Vertex's default `e2-standard-4`, plus the per-run pipeline fee.

Every figure says where it came from: an argument, the registry's evaluations (runtime
measurements recorded per model version), the request log, or a default measured on this
machine (the constants below).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from fleetops.errors import UserError
from fleetops.names import PARAM_FLEET_SPEC, PARAM_TRAIN_CPU_LIMIT, PARAM_TRAIN_MEMORY_LIMIT

PRICES_FILE = Path(__file__).resolve().parent / "prices" / "vertex_prices.yaml"

# Measured on this machine (2 cores, TensorFlow 2.21, the sample spec's Keras churn models): 20 models
# loaded with `Predictor.load`, each then scored at the 7 batch shapes the server pads to (1 to 64
# rows), took the process from 685 to 748 MB RSS: 3.3 MB a model (1.9 MB scored at one shape only).
DEFAULT_MODEL_MB = 3.3
# Per loaded model by the runtime that serves it: a LiteRT float32 or int8 interpreter of the sample
# models took 0.15-0.18 MB RSS each (200 loaded in a fresh process, this machine).
# Boosted trees (`xgboost`): 200 loaded and each scored once (the 40 regions of `make_churn(500, 40)`, the sample
# spec's gbt settings: boosters of 2-100 KB, 40 KB on average) took 0.056 MB RSS each; it grows with the booster.
MODEL_MB_BY_RUNTIME = {"keras": DEFAULT_MODEL_MB, "float32": 0.17, "int8": 0.17, "xgboost": 0.06}
# An ensemble holds each of its members loaded (by its own runtime) and little else: a gbt + LiteRT linear
# ensemble took 0.185 MB, its members 0.028 + 0.141 MB, loaded 300 times each in fresh processes.
ENSEMBLE_OVERHEAD_MB = 0.02
# A serving process (`fleetops.serving.server` and TensorFlow imported) with one such model loaded
# and traced at those shapes: 687 MB RSS, measured the same way; a dedicated node holds one of these.
DEFAULT_SERVER_MB = 690.0
# The serving benchmark (README: `bench_serving.py`, single-instance requests at 32 connections,
# micro-batched, 2 workers) served 5,799 requests/s on this 2-core machine: about 2,900 per vCPU.
DEFAULT_RPS_PER_VCPU = 2900.0
# Vertex's autoscaling target when the spec sets no `serving.autoscaling_target_cpu`.
VERTEX_DEFAULT_TARGET_CPU = 60
# Share of a node's memory a serving process may use: headroom for the OS and Vertex's own agents.
# An assumption of ours, not a figure Vertex publishes.
USABLE_MEMORY_FRACTION = 0.8
# Vertex AI Pipelines runs a task without resource settings on this machine type.
PIPELINE_DEFAULT_MACHINE = "e2-standard-4"
# The pipeline tasks that `pipelines/training.py` gives `train_cpu_limit` / `train_memory_limit`,
# and those parameters' defaults there (a test checks they agree).
TRAIN_TASKS = ("train", "train-global")
DEFAULT_TRAIN_CPU = "4"
DEFAULT_TRAIN_MEMORY = "16G"
# Models whose evaluations are read for runtime measurements: an even sample of a large fleet.
MAX_SAMPLED_MODELS = 200
OPTIONS = ("dedicated", "pool", "fleet")
TITLES = {"dedicated": "dedicated endpoints", "pool": "co-hosted pool", "fleet": "one fleet endpoint"}
# `serving.cohosting` (and names a user may give) -> the option priced here.
CHOICES = {"none": "dedicated", "dedicated": "dedicated", "pool": "pool", "fleet": "fleet"}
POOL_LIMITS = (
    "a Vertex deployment resource pool takes models in Vertex's prebuilt TensorFlow (or PyTorch) serving "
    "containers only, not our custom container, and no Vertex Explainable AI (`:explain`); its models are "
    "not isolated from each other and compete for CPU and memory"
)


class PriceTableError(UserError):
    """A price file does not follow the schema. `problems` lists every problem, each naming its field."""

    def __init__(self, problems: list[str], source: str):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"price file {source} has {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class Machine:
    name: str
    vcpus: int
    memory_gib: float


@dataclass(frozen=True)
class PriceTable:
    """Validated prices: USD per node-hour of prediction and per hour of training, by region and machine type."""

    path: str
    as_of: str
    source: str
    currency: str
    hours_per_month: float
    pipeline_run_usd: float
    machines: dict[str, Machine]
    prediction: dict[str, dict[str, float]]
    training: dict[str, dict[str, float]]

    def machine(self, name: str, what: str = "machine type") -> Machine:
        if name not in self.machines:
            known = ", ".join(self.machines)
            raise UserError(f"{what} {name!r} is not in the price table {self.path}; known: {known}")
        return self.machines[name]

    def prediction_price(self, region: str, machine: str, what: str = "serving.machine_type") -> float:
        return self._price(self.prediction, "prediction", region, machine, what)

    def training_price(self, region: str, machine: str, what: str = "training machine") -> float:
        return self._price(
            self.training, "training", region, machine, what, why=" (Vertex custom training may not offer it)"
        )

    def _price(
        self, table: dict[str, dict[str, float]], kind: str, region: str, machine: str, what: str, why: str = ""
    ) -> float:
        self.machine(machine, what)
        prices = self._region(region, table)
        if machine not in prices:
            known = ", ".join(prices)
            raise UserError(
                f"{what} {machine!r} has no {kind} price in {region} in the price table {self.path}{why}; "
                f"priced there: {known}"
            )
        return prices[machine]

    def _region(self, region: str, table: dict[str, dict[str, float]]) -> dict[str, float]:
        if region not in table:
            raise UserError(f"region {region!r} is not in the price table {self.path}; known: {', '.join(table)}")
        return table[region]

    def age_days(self, today: date | None = None) -> int:
        as_of = date.fromisoformat(self.as_of if len(self.as_of) == 10 else f"{self.as_of}-01")
        return ((today or datetime.now(UTC).date()) - as_of).days


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read and validate a price file (default: the one shipped); every problem is listed, by field."""
    path = Path(path) if path is not None else PRICES_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"price file {path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise PriceTableError([f"not valid YAML: {exc}"], str(path)) from None
    return parse_prices(raw, str(path))


def parse_prices(raw: Any, source: str) -> PriceTable:
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise PriceTableError([f"must be a mapping of fields, got {type(raw).__name__}"], source)
    known_fields = {
        "as_of",
        "source",
        "currency",
        "hours_per_month",
        "pipeline_run_usd",
        "machine_types",
        "regions",
    }
    for name in sorted(set(raw) - known_fields):
        problems.append(f"{name}: unknown field; the fields are {', '.join(sorted(known_fields))}")
    as_of = str(raw.get("as_of", ""))
    if "as_of" not in raw:
        problems.append("as_of: required field is missing (the date the prices are from, YYYY-MM or YYYY-MM-DD)")
    elif not re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", as_of) or not _is_date(as_of):
        problems.append(f"as_of: must be a date, YYYY-MM or YYYY-MM-DD (got {raw['as_of']!r})")
    for name in ("source", "currency"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            problems.append(f"{name}: required, a non-empty string (got {raw.get(name)!r})")
    hours = _positive(raw, "hours_per_month", "hours_per_month", problems)
    fee = raw.get("pipeline_run_usd", 0.0)
    if not _number(fee) or fee < 0:
        problems.append(f"pipeline_run_usd: must be a number of USD, 0 or more (got {fee!r})")
    machines: dict[str, Machine] = {}
    declared = raw.get("machine_types")
    if not isinstance(declared, dict) or not declared:
        problems.append("machine_types: required, a mapping of machine type -> {vcpus, memory_gib}")
        declared = {}
    for name, shape in declared.items():
        where = f"machine_types.{name}"
        if not isinstance(shape, dict):
            problems.append(f"{where}: must be a mapping with vcpus and memory_gib (got {shape!r})")
            continue
        for extra in sorted(set(shape) - {"vcpus", "memory_gib"}):
            problems.append(f"{where}.{extra}: unknown field; a machine type has vcpus and memory_gib")
        vcpus = _positive(shape, "vcpus", f"{where}.vcpus", problems)
        memory = _positive(shape, "memory_gib", f"{where}.memory_gib", problems)
        if vcpus is not None and memory is not None:
            machines[str(name)] = Machine(str(name), int(vcpus), float(memory))
    prediction: dict[str, dict[str, float]] = {}
    training: dict[str, dict[str, float]] = {}
    regions = raw.get("regions")
    if not isinstance(regions, dict) or not regions:
        problems.append("regions: required, a mapping of region -> {prediction_node_hour, training_hour}")
        regions = {}
    for region, tables in regions.items():
        if not isinstance(tables, dict):
            problems.append(f"regions.{region}: must be a mapping with prediction_node_hour and training_hour")
            continue
        for extra in sorted(set(tables) - {"prediction_node_hour", "training_hour"}):
            problems.append(
                f"regions.{region}.{extra}: unknown field; a region has prediction_node_hour, training_hour"
            )
        for kind, into in (("prediction_node_hour", prediction), ("training_hour", training)):
            where = f"regions.{region}.{kind}"
            prices = tables.get(kind)
            if not isinstance(prices, dict) or not prices:
                problems.append(f"{where}: required, a mapping of machine type -> USD per hour")
                continue
            into[str(region)] = {}
            for machine, price in prices.items():
                if machine not in declared:
                    problems.append(
                        f"{where}.{machine}: machine type missing from machine_types (its vCPUs and memory)"
                    )
                if not _number(price) or price <= 0:
                    problems.append(f"{where}.{machine}: must be a positive number of USD per hour (got {price!r})")
                    continue
                into[str(region)][str(machine)] = float(price)
    if problems:
        raise PriceTableError(problems, source)
    return PriceTable(
        path=source,
        as_of=as_of,
        source=raw["source"],
        currency=raw["currency"],
        hours_per_month=float(hours),  # type: ignore[arg-type]
        pipeline_run_usd=float(fee),
        machines=machines,
        prediction=prediction,
        training=training,
    )


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text if len(text) == 10 else f"{text}-01")
    except ValueError:
        return False
    return True


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(mapping: dict, key: str, where: str, problems: list[str]) -> float | None:
    if key not in mapping:
        problems.append(f"{where}: required field is missing")
        return None
    value = mapping[key]
    if not _number(value) or value <= 0:
        problems.append(f"{where}: must be a positive number (got {value!r})")
        return None
    return float(value)


# --- serving --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A number the estimate uses and where it came from."""

    value: float
    source: str


@dataclass(frozen=True)
class ServingInputs:
    """What serving costs depend on; each figure with its source."""

    models: Figure
    rps: Figure
    model_mb: Figure
    server_mb: Figure
    rps_per_vcpu: Figure
    machine_type: str
    min_replicas: int
    max_replicas: int
    target_cpu: int
    # Requests/s per endpoint (= per model), when the request log says; else the traffic is spread evenly.
    endpoint_rps: dict[str, float] = field(default_factory=dict)
    # Models requested within the window: the fleet endpoint's cache working set (default: every model).
    working_set: Figure | None = None
    # Why the fleet's models cannot go into a pool at all (e.g. boosted trees: no prebuilt container serves them).
    pool_refused: str = ""


@dataclass
class Option:
    name: str
    title: str
    machine_type: str
    nodes: int
    monthly_usd: float
    fits: bool
    arithmetic: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fits_on: dict[str, Any] | None = None


def node_capacity(machine: Machine, inputs: ServingInputs) -> float:
    """Requests/s one node serves at the autoscaling target: vCPUs x requests/s per vCPU x target CPU."""
    return machine.vcpus * inputs.rps_per_vcpu.value * inputs.target_cpu / 100


def usable_mb(machine: Machine) -> float:
    return machine.memory_gib * 1024 * USABLE_MEMORY_FRACTION


def serving_options(inputs: ServingInputs, prices: PriceTable, region: str) -> list[Option]:
    """Every option on the spec's machine type; one that does not fit names the cheapest machine it fits on."""
    options = [_option(name, inputs, prices, region, inputs.machine_type) for name in OPTIONS]
    for option in options:
        if not option.fits:
            option.fits_on = _cheapest_fit(option.name, inputs, prices, region)
    return options


def _option(name: str, inputs: ServingInputs, prices: PriceTable, region: str, machine_type: str) -> Option:
    machine = prices.machine(machine_type, "serving.machine_type")
    price = prices.prediction_price(region, machine_type)
    hours = prices.hours_per_month
    capacity = node_capacity(machine, inputs)
    usable = usable_mb(machine)
    models = int(inputs.models.value)
    rps = inputs.rps.value
    lo, hi = inputs.min_replicas, inputs.max_replicas
    problems: list[str] = []
    notes: list[str] = []
    money = f"${price:.4f}/node-hour x {hours:g} h"
    if name == "dedicated":
        need = inputs.server_mb.value + inputs.model_mb.value
        if need > usable:
            problems.append(
                f"a node needs {need:,.0f} MB (server + its model), {machine_type} has {usable:,.0f} usable"
            )
        if inputs.endpoint_rps:
            loads = list(inputs.endpoint_rps.values()) + [0.0] * max(0, models - len(inputs.endpoint_rps))
        else:
            loads = [rps / models] * models if models else []
        replicas = [max(lo, math.ceil(load / capacity)) for load in loads]
        nodes = sum(replicas)
        busiest = max(replicas, default=lo)
        if busiest > hi:
            problems.append(
                f"the busiest endpoint needs {busiest} nodes for {max(loads):,.1f} req/s; "
                f"serving.max_replica_count is {hi}"
            )
        shown = (
            f"{models:,} endpoints x {lo} node(s)"
            if nodes == models * lo
            else f"{nodes:,} nodes over {models:,} endpoints"
        )
        arithmetic = f"{shown} x {money}"
    elif name == "pool":
        room = usable - inputs.server_mb.value
        total_mb = models * inputs.model_mb.value
        if room <= 0:
            problems.append(f"the serving process alone ({inputs.server_mb.value:,.0f} MB) fills {machine_type}")
            pools = 1
        else:
            pools = max(1, math.ceil(total_mb / room))
        per_pool = max(lo, math.ceil(rps / pools / capacity))
        if per_pool > hi:
            problems.append(f"each pool needs {per_pool} nodes for its traffic; serving.max_replica_count is {hi}")
        if inputs.pool_refused:
            problems.append(inputs.pool_refused)
        nodes = pools * per_pool
        arithmetic = (
            f"{pools:,} pool(s) [ceil({total_mb:,.0f} MB of models / {max(room, 0):,.0f} MB a node)] x {per_pool} "
            f"node(s) [max({lo}, ceil({rps / pools:,.1f} req/s a pool / {capacity:,.0f} per node))] x {money}"
        )
        if pools > 1:
            notes.append(
                f"the models do not fit one node: {pools} pools, each node of a pool holding all of that pool's models"
            )
        notes.append(POOL_LIMITS)
        notes.append("its memory is estimated from our server's figures, a stand-in for the prebuilt container's")
    else:
        working = inputs.working_set.value if inputs.working_set else models
        need = inputs.server_mb.value + working * inputs.model_mb.value
        if need > usable:
            holds = max(0, math.floor((usable - inputs.server_mb.value) / inputs.model_mb.value))
            problems.append(
                f"the cache's working set of {working:,.0f} models needs {need:,.0f} MB, {machine_type} has "
                f"{usable:,.0f} usable (its cache holds {holds:,}; the rest would be reloaded on request)"
            )
        nodes = max(lo, math.ceil(rps / capacity))
        if nodes > hi:
            problems.append(f"{rps:,.1f} req/s needs {nodes} nodes; serving.max_replica_count is {hi}")
        arithmetic = f"max({lo}, ceil({rps:,.1f} req/s / {capacity:,.0f} per node)) = {nodes} node(s) x {money}"
        notes.append("our custom container routes each request to its segment's model, loaded on first use (LRU)")
    return Option(
        name=name,
        title=TITLES[name],
        machine_type=machine_type,
        nodes=nodes,
        monthly_usd=round(nodes * price * hours, 2),
        fits=not problems,
        arithmetic=arithmetic,
        problems=problems,
        notes=notes,
    )


def _cheapest_fit(name: str, inputs: ServingInputs, prices: PriceTable, region: str) -> dict[str, Any] | None:
    fitting = [
        option
        for machine in prices.prediction.get(region, {})
        if (option := _option(name, inputs, prices, region, machine)).fits
    ]
    if not fitting:
        return None
    best = min(fitting, key=lambda o: (o.monthly_usd, o.machine_type))
    return {"machine_type": best.machine_type, "nodes": best.nodes, "monthly_usd": best.monthly_usd}


def choice(spec: Any) -> tuple[str, str]:
    """The option the spec chose and the value it says: `serving.cohosting` (dedicated when the field is absent)."""
    value = getattr(spec.serving, "cohosting", None)
    if value is None:
        return "dedicated", "no serving.cohosting field: one endpoint per model"
    text = str(getattr(value, "value", value))
    return CHOICES.get(text, text), f"serving.cohosting: {text}"


def cheapest(options: list[Option]) -> list[Option]:
    """The options that fit at the lowest monthly cost (several on a tie)."""
    fitting = [o for o in options if o.fits]
    if not fitting:
        return []
    low = min(o.monthly_usd for o in fitting)
    return [o for o in fitting if o.monthly_usd == low]


# --- inputs from the registry and the request log -------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """Runtime figures found in the lineage of `measured` of `sampled` models (None: none found)."""

    sampled: int
    measured: int
    model_mb: float | None = None
    p50_ms: float | None = None
    load_ms: float | None = None


def runtime_figures(record: Any) -> dict[str, float]:
    """Memory (MB), p50 latency (ms) and load time (ms) of the runtime a version is served with.

    `record` is the `runtimes` entry of a version's lineage, as evaluation measured it: `serving` names
    the runtime (`keras`, `float32`, `int8`, `xgboost`, `ensemble`) and `variants` holds each one's
    `load_ms` and `p50_ms`. Memory per loaded model is not measurable per version inside a shared
    process, so it is the figure measured here for that runtime (`MODEL_MB_BY_RUNTIME`); an
    ensemble's is its members' (`members`: the runtime serving each) plus `ENSEMBLE_OVERHEAD_MB`.
    Anything missing is left out.
    """
    if not isinstance(record, dict) or not isinstance(record.get("variants"), dict):
        return {}
    serving = record.get("serving")
    variant = record["variants"].get(serving)
    if not isinstance(variant, dict):
        return {}
    found: dict[str, float] = {}
    if serving == "ensemble":
        members = variant.get("members")
        if isinstance(members, dict) and members:
            found["model_mb"] = ENSEMBLE_OVERHEAD_MB + sum(
                MODEL_MB_BY_RUNTIME.get(runtime, DEFAULT_MODEL_MB) for runtime in members.values()
            )
    else:
        found["model_mb"] = MODEL_MB_BY_RUNTIME.get(serving, DEFAULT_MODEL_MB)
    for key in ("p50_ms", "load_ms"):
        if _number(variant.get(key)) and variant[key] > 0:
            found[key] = float(variant[key])
    return found


def runtime_measurements(registry: Any, model_ids: list[str], limit: int = MAX_SAMPLED_MODELS) -> Runtime:
    """Mean runtime figures over an even sample of the models, from each one's serving version's lineage
    (`champion`, else the default version): what evaluation measured before registering it."""
    from fleetops.errors import NotFoundError
    from fleetops.names import CHAMPION_ALIAS

    ids = sorted(model_ids)
    sample = ids[:: max(1, math.ceil(len(ids) / limit))] if ids else []
    figures: dict[str, list[float]] = {"model_mb": [], "p50_ms": [], "load_ms": []}
    measured = 0
    for model in sample:
        try:
            version = registry.get_version(model, CHAMPION_ALIAS)
        except NotFoundError:
            try:
                version = registry.get_version(model)
            except NotFoundError:
                continue
        found = runtime_figures((version.lineage or {}).get("runtimes"))
        if found:
            measured += 1
            for key, value in found.items():
                figures[key].append(value)
    means = {k: (sum(v) / len(v) if v else None) for k, v in figures.items()}
    return Runtime(len(sample), measured, means["model_mb"], means["p50_ms"], means["load_ms"])


@dataclass(frozen=True)
class Traffic:
    """Requests per second from the request log: total, per endpoint, and the models requested."""

    rps: float
    requests: int
    seconds: float
    endpoint_rps: dict[str, float]
    models: int
    logging_rates: list[float]


def traffic_from_log(
    home: str | Path,
    window_hours: float,
    logging_rate: float,
    endpoints: dict[str, float] | None = None,
    now: datetime | None = None,
) -> Traffic | None:
    """Requests/s over the window (the last `window_hours`, or since the first request logged in it).

    The log has one row per instance, sampled at its endpoint's logging rate: rows logged together
    (same time, endpoint and deployed model) are one request, and an endpoint's count is divided by
    its rate. `endpoints` (endpoint id -> its logging rate) keeps only those endpoints (the fleet's);
    without it every endpoint counts, at `logging_rate`. None when nothing was logged in the window.
    """
    from fleetops.serving.request_log import read_request_log

    now = now or datetime.now(UTC)
    start = now - timedelta(hours=window_hours)
    rows = read_request_log(home, since=start.isoformat(timespec="microseconds"))
    if endpoints is not None and not rows.empty:
        rows = rows[rows["endpoint_id"].isin(set(endpoints))]
    if rows.empty:
        return None
    requests = rows.drop_duplicates(["time", "endpoint_id", "deployed_model_id"])
    first = min(datetime.fromisoformat(t) for t in requests["time"])
    seconds = max(1.0, (now - max(first, start)).total_seconds())
    endpoint_rps: dict[str, float] = {}
    rates = set()
    for endpoint, count in requests.groupby("endpoint_id").size().items():
        rate = (endpoints or {}).get(str(endpoint), logging_rate)
        if rate <= 0:
            raise UserError(f"endpoint {endpoint!r} logs no requests (logging rate 0): give --rps")
        rates.add(rate)
        endpoint_rps[str(endpoint)] = count / rate / seconds
    return Traffic(
        rps=sum(endpoint_rps.values()),
        requests=len(requests),
        seconds=seconds,
        endpoint_rps=endpoint_rps,
        models=int(requests["model_id"].nunique()),
        logging_rates=sorted(rates),
    )


def fleet_size(spec: Any, read_table: Any = None) -> Figure:
    """Models in the fleet: the spec's data.segments, else the segments of its data that train or fall back.

    A segment with fewer than `data.min_rows_per_segment` rows gets no model under the `skip` failure
    policy (the global model stands in for it under `global`, so it is served). `read_table(source)`
    reads a SQL or bq:// source (the platform's); a file is read directly.
    """
    from fleetops.data.sources import read_file, source_kind
    from fleetops.data.validation import segment_values
    from fleetops.spec import FailurePolicy

    if spec.data.segments is not None:
        return Figure(len(spec.data.segments), "the spec's data.segments")
    source = spec.data.source
    if source_kind(source) == "file":
        frame = read_file(source)
    elif read_table is not None:
        frame = read_table(source)
    else:
        raise UserError(f"cannot read data.source {source!r} here to count its segments: give --models N")
    if not spec.data.segment_column:
        return Figure(1, "one model: the spec has no data.segment_column")
    counts = segment_values(frame, spec).dropna().value_counts()
    small = int((counts < spec.data.min_rows_per_segment).sum())
    if spec.segment_failures.policy == FailurePolicy.SKIP and small:
        return Figure(
            len(counts) - small,
            f"the spec's data: {len(counts):,} values of {spec.data.segment_column}, {small:,} skipped "
            f"(under data.min_rows_per_segment)",
        )
    return Figure(len(counts), f"the spec's data: {len(counts):,} values of {spec.data.segment_column}")


def serving_inputs(
    spec: Any,
    prices: PriceTable,
    home: str | Path,
    platform: Any = None,
    *,
    models: int | None = None,
    rps: float | None = None,
    model_mb: float | None = None,
    server_mb: float | None = None,
    rps_per_node: float | None = None,
    working_set: int | None = None,
) -> ServingInputs:
    """The figures serving costs depend on: each given one (the `fleetops cost` flag named), else measured.

    `platform` is the local twin of `home` (None when there is none): its registry gives the fleet's
    models and their evaluations' runtime measurements, its endpoints the logging rates; the request
    log under `home` gives the traffic. What neither gives comes from the defaults measured here.
    """
    from fleetops.names import LABEL_FLEET

    machine = prices.machine(spec.serving.machine_type, "serving.machine_type")
    fleet_models = platform.registry.list_models({LABEL_FLEET: spec.name}) if platform else []
    if models is not None:
        size = Figure(models, "--models")
    else:
        try:
            size = fleet_size(spec, platform.read_table if platform else None)
        except UserError as exc:
            if not fleet_models:
                raise UserError(f"cannot count the fleet's models ({exc}); give --models N") from None
            size = Figure(len(fleet_models), f"the fleet's models in the registry (the data: {exc})")
    if size.value < 1:
        raise UserError(f"the fleet has no models ({size.source}); give --models N")

    runtime = runtime_measurements(platform.registry, fleet_models) if fleet_models else None
    measured = f"of {runtime.measured} of {runtime.sampled} models' evaluated runtimes" if runtime else ""
    if model_mb is not None:
        memory = Figure(model_mb, "--memory-per-model")
    elif runtime and runtime.model_mb is not None:
        memory = Figure(runtime.model_mb, f"mean {measured}")
    else:
        memory = Figure(DEFAULT_MODEL_MB, "default: a Keras churn model, measured here")
    server = (
        Figure(server_mb, "--server-memory")
        if server_mb is not None
        else Figure(DEFAULT_SERVER_MB, "default: the server process with TensorFlow, measured here")
    )
    target = spec.serving.autoscaling_target_cpu or VERTEX_DEFAULT_TARGET_CPU
    if rps_per_node is not None:
        per_vcpu = Figure(rps_per_node / machine.vcpus / (target / 100), "from --rps-per-node")
    elif runtime and runtime.p50_ms is not None and 1000 / runtime.p50_ms < DEFAULT_RPS_PER_VCPU:
        # A model slower than the server's HTTP work bounds a core at one request per p50.
        per_vcpu = Figure(1000 / runtime.p50_ms, f"1000 / p50 {runtime.p50_ms:.2f} ms, {measured}: one at a time")
    else:
        per_vcpu = Figure(DEFAULT_RPS_PER_VCPU, "default: bench_serving here")

    endpoint_rps: dict[str, float] = {}
    hot = None
    if rps is not None:
        traffic = Figure(rps, "--rps, spread evenly over the models")
    else:
        rates = None
        if platform is not None:
            mine = [e for e in platform.endpoints.list() if e.labels.get(LABEL_FLEET) == spec.name]
            rates = {e.endpoint_id: e.request_logging_rate for e in mine}
        logged = traffic_from_log(home, spec.monitoring.window_hours, spec.serving.request_logging_rate, rates)
        if logged is None:
            traffic = Figure(0.0, "no --rps and nothing in the request log: priced at the minimum replicas")
        else:
            shown = "/".join(f"{r:g}" for r in logged.logging_rates)
            traffic = Figure(
                logged.rps,
                f"request log: {logged.requests:,} requests logged over {logged.seconds / 3600:.2f} h "
                f"(logging rate {shown})",
            )
            endpoint_rps = logged.endpoint_rps
            hot = Figure(logged.models, "the models requested in the request log's window")
    if working_set is not None:
        hot = Figure(working_set, "--working-set")
    return ServingInputs(
        models=size,
        rps=traffic,
        model_mb=memory,
        server_mb=server,
        rps_per_vcpu=per_vcpu,
        machine_type=machine.name,
        min_replicas=spec.serving.min_replica_count,
        max_replicas=spec.serving.max_replica_count,
        target_cpu=target,
        endpoint_rps=endpoint_rps,
        working_set=hot,
        pool_refused=_pool_refused(spec),
    )


def _pool_refused(spec: Any) -> str:
    """Why the spec's architectures cannot be co-hosted: Vertex's prebuilt TensorFlow container serves Keras only."""
    others = [a.value for a in getattr(spec, "architectures", []) if not getattr(a, "is_keras", True)]
    if not others:
        return ""
    return (
        f"architectures {others} are served by our container only (no prebuilt container loads boosted trees "
        "or our ensembles), and a pool takes prebuilt containers' models only"
    )


# --- training -------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's log lines (see fleetops/platform/local/pipeline_runs.py): "02:58:34.759 - INFO - Executing task 'ingest'".
_CLOCK = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d+) ")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


@dataclass(frozen=True)
class TaskTime:
    name: str
    status: str
    seconds: float


def task_durations(log_path: str | Path) -> list[TaskTime]:
    """Each task's duration from a kfp.local run log: its start and finish lines' clock times.

    Tasks of one name (a ParallelFor's) are paired first started, first finished, as
    `fleetops.platform.local.pipeline_runs` does; a finish before its start on the clock crossed midnight.
    """
    started: dict[str, list[float]] = {}
    tasks: list[TaskTime] = []
    for line in Path(log_path).read_text(errors="replace").splitlines():
        line = _ANSI.sub("", line)
        clock = _CLOCK.match(line)
        if not clock:
            continue
        h, m, s, frac = clock.groups()
        at = int(h) * 3600 + int(m) * 60 + int(s) + float(f"0.{frac}")
        if match := _STARTED.search(line):
            started.setdefault(match.group(1), []).append(at)
        elif match := _FINISHED.search(line):
            name, status = match.groups()
            begun = started.get(name)
            if not begun:
                continue
            seconds = at - begun.pop(0)
            tasks.append(TaskTime(name, status, seconds + 86400 if seconds < 0 else seconds))
    return tasks


def latest_run(home: str | Path, fleet: str) -> Path | None:
    """The newest run of the fleet under `<home>/runs/` that finished (has outputs.json), else the newest one."""
    runs = Path(home) / "runs"
    if not runs.is_dir():
        return None
    mine = []
    for run in sorted(runs.iterdir(), reverse=True):
        arguments = run / "arguments.json"
        if not (run / "run.log").is_file() or not arguments.is_file():
            continue
        try:
            spec = yaml.safe_load(json.loads(arguments.read_text()).get(PARAM_FLEET_SPEC, ""))
        except (ValueError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(spec, dict) and spec.get("name") == fleet:
            mine.append(run)
    finished = [run for run in mine if (run / "outputs.json").is_file()]
    return (finished or mine or [None])[0]


def cpu_count(text: str) -> float:
    """A KFP cpu_limit ("4", "500m") as CPUs."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)(m?)\s*", str(text))
    if not match:
        raise UserError(f"cpu limit {text!r} is not a number of CPUs such as '4' or '500m'")
    return float(match.group(1)) / (1000 if match.group(2) else 1)


def memory_gib(text: str) -> float:
    """A KFP memory_limit ("16G", "15Gi", "512M") in GiB; K, M, G, T are powers of 1000 as Vertex reads them."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTE]i?)?\s*", str(text))
    if not match:
        raise UserError(f"memory limit {text!r} is not a size such as '16G' or '15Gi'")
    number, unit = float(match.group(1)), match.group(2) or ""
    powers = {"K": 1, "M": 2, "G": 3, "T": 4, "E": 6}
    scale = (1024 if unit.endswith("i") else 1000) ** powers[unit[0]] if unit else 1
    return number * scale / 2**30


def machine_for_limits(prices: PriceTable, region: str, cpu: str, memory: str) -> str:
    """The cheapest machine type with a training price that has at least `cpu` vCPUs and `memory`."""
    cpus, gib = cpu_count(cpu), memory_gib(memory)
    priced = prices.training.get(region, {})
    fitting = [m for m in priced if prices.machines[m].vcpus >= cpus and prices.machines[m].memory_gib >= gib - 1e-9]
    if not fitting:
        raise UserError(
            f"no machine type with a training price in {region} has {cpu} vCPUs and {memory} of memory: "
            "give --training-machine"
        )
    return min(fitting, key=lambda m: (priced[m], m))


def training_cost(
    run_dir: Path, prices: PriceTable, region: str, training_machine: str | None = None
) -> dict[str, Any]:
    """A run's cost on Vertex AI Pipelines from its task durations measured here (see the module docstring)."""
    tasks = task_durations(run_dir / "run.log")
    arguments = json.loads((run_dir / "arguments.json").read_text())
    if training_machine:
        train_machine, why = training_machine, "--training-machine"
    else:
        cpu = str(arguments.get(PARAM_TRAIN_CPU_LIMIT, DEFAULT_TRAIN_CPU))
        memory = str(arguments.get(PARAM_TRAIN_MEMORY_LIMIT, DEFAULT_TRAIN_MEMORY))
        train_machine = machine_for_limits(prices, region, cpu, memory)
        why = f"train_cpu_limit {cpu}, train_memory_limit {memory}: the cheapest machine type with as much"
    train_price = prices.training_price(region, train_machine, "training machine")
    other_price = prices.training_price(region, PIPELINE_DEFAULT_MACHINE, "Vertex Pipelines' default machine")
    rows = []
    for task in tasks:
        machine, price = (
            (train_machine, train_price) if task.name in TRAIN_TASKS else (PIPELINE_DEFAULT_MACHINE, other_price)
        )
        rows.append(asdict(task) | {"machine_type": machine, "usd": task.seconds / 3600 * price})
    compute = sum(r["usd"] for r in rows)
    return {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "finished": (run_dir / "outputs.json").is_file(),
        "tasks": rows,
        "task_seconds": sum(t.seconds for t in tasks),
        "train_machine_type": train_machine,
        "train_machine_from": why,
        "other_machine_type": PIPELINE_DEFAULT_MACHINE,
        "compute_usd": round(compute, 4),
        "pipeline_run_usd": prices.pipeline_run_usd,
        "total_usd": round(compute + prices.pipeline_run_usd, 4),
        "notes": [
            "task durations measured on this machine under kfp.local; on Vertex each task is its own job, "
            "which adds its machine's start-up and runs on other cores",
            "a Vertex hyperparameter tuning job (tuning.enabled on Vertex) is billed on its own trials' machines",
        ],
    }


# --- the report -----------------------------------------------------------------------------------


def build_report(
    spec: Any,
    inputs: ServingInputs,
    prices: PriceTable,
    region: str,
    training: dict[str, Any] | None,
    today: date | None = None,
) -> dict[str, Any]:
    """Everything `fleetops cost` prints, as JSON-ready data."""
    options = serving_options(inputs, prices, region)
    chosen, chosen_from = choice(spec)
    best = cheapest(options)
    return {
        "fleet": spec.name,
        "region": region,
        "prices": {
            "file": prices.path,
            "as_of": prices.as_of,
            "source": prices.source,
            "currency": prices.currency,
            "age_days": prices.age_days(today),
            "hours_per_month": prices.hours_per_month,
        },
        "inputs": {
            "machine_type": inputs.machine_type,
            "vcpus": prices.machines[inputs.machine_type].vcpus,
            "memory_gib": prices.machines[inputs.machine_type].memory_gib,
            "node_hour_usd": prices.prediction_price(region, inputs.machine_type),
            "min_replica_count": inputs.min_replicas,
            "max_replica_count": inputs.max_replicas,
            "target_cpu": inputs.target_cpu,
            "usable_memory_fraction": USABLE_MEMORY_FRACTION,
            "models": asdict(inputs.models),
            "rps": asdict(inputs.rps),
            "model_mb": asdict(inputs.model_mb),
            "server_mb": asdict(inputs.server_mb),
            "rps_per_vcpu": asdict(inputs.rps_per_vcpu),
            "working_set": asdict(inputs.working_set) if inputs.working_set else None,
            "node_capacity_rps": node_capacity(prices.machines[inputs.machine_type], inputs),
        },
        "serving": {
            "options": [asdict(o) for o in options],
            "chosen": chosen,
            "chosen_from": chosen_from,
            "cheapest_that_fits": [o.name for o in best],
        },
        "training": training,
    }


def render(report: dict[str, Any]) -> str:
    """The report as the text `fleetops cost` prints."""
    p, i, s = report["prices"], report["inputs"], report["serving"]
    lines = [
        f"fleet '{report['fleet']}' on {i['machine_type']} in {report['region']} "
        f"({i['vcpus']} vCPUs, {i['memory_gib']:g} GiB; ${i['node_hour_usd']:.4f} per node-hour)",
        f"prices: {p['file']}: list prices as of {p['as_of']} from {p['source']} ({p['currency']})",
    ]
    if p["age_days"] > 365:
        lines.append(f"  they are {p['age_days'] // 30} months old: check them against the source, or give --prices")
    lines += ["", "inputs:"]
    rows = [
        ("models", f"{i['models']['value']:,.0f}", i["models"]["source"]),
        ("traffic", f"{i['rps']['value']:,.2f} req/s", i["rps"]["source"]),
        ("memory per model", f"{i['model_mb']['value']:,.1f} MB", i["model_mb"]["source"]),
        ("serving process", f"{i['server_mb']['value']:,.0f} MB", i["server_mb"]["source"]),
        (
            "capacity per node",
            f"{i['node_capacity_rps']:,.0f} req/s",
            f"{i['vcpus']} vCPUs x {i['rps_per_vcpu']['value']:,.0f} req/s ({i['rps_per_vcpu']['source']}) "
            f"x {i['target_cpu']}% target CPU",
        ),
        ("replicas", f"{i['min_replica_count']} to {i['max_replica_count']}", "serving.min/max_replica_count"),
    ]
    if i["working_set"]:
        rows.insert(2, ("cache working set", f"{i['working_set']['value']:,.0f} models", i["working_set"]["source"]))
    lines += [f"  {name:<18} {value:>14}  {why}" for name, value, why in rows]
    lines += ["", f"serving per month ({p['hours_per_month']:g} h):"]
    lines.append(f"  {'option':<20} {'nodes':>6} {'USD/month':>11}  fits")
    for o in s["options"]:
        mark = "yes" if o["fits"] else "NO"
        lines.append(f"  {o['title']:<20} {o['nodes']:>6,} {o['monthly_usd']:>11,.2f}  {mark}")
    lines.append("")
    for o in s["options"]:
        lines.append(f"  {o['title']}: {o['arithmetic']}")
        lines += [f"    does not fit: {problem}" for problem in o["problems"]]
        if o["fits_on"]:
            f = o["fits_on"]
            lines.append(f"    fits on {f['machine_type']}: {f['nodes']:,} node(s), ${f['monthly_usd']:,.2f}/month")
        elif not o["fits"]:
            lines.append("    fits on no machine type of the price table")
        lines += [f"    note: {note}" for note in o["notes"]]
    by_name = {o["name"]: o for o in s["options"]}
    chosen = by_name.get(s["chosen"])
    lines.append("")
    if chosen:
        fits = "" if chosen["fits"] else " (does not fit)"
        lines.append(
            f"the spec's choice: {chosen['title']}, ${chosen['monthly_usd']:,.2f}/month{fits} ({s['chosen_from']})"
        )
    else:
        lines.append(f"the spec's choice: {s['chosen']!r} ({s['chosen_from']}), not an option priced here")
    if s["cheapest_that_fits"]:
        best = [by_name[n] for n in s["cheapest_that_fits"]]
        names = " and ".join(o["title"] for o in best)
        lines.append(f"cheapest that fits: {names}, ${best[0]['monthly_usd']:,.2f}/month")
    else:
        lines.append("cheapest that fits: none on this machine type (see 'fits on' above)")
    t = report["training"]
    lines.append("")
    if t is None:
        lines.append("training: no run of this fleet under the home's runs/ (run `fleetops run` first)")
    else:
        lines.append(
            f"training run {t['run']}{'' if t['finished'] else ' (did not finish)'}: "
            f"${t['total_usd']:.4f} = ${t['compute_usd']:.4f} compute for {t['task_seconds']:,.0f} task-seconds "
            f"+ ${t['pipeline_run_usd']:.2f} pipeline run"
        )
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for task in t["tasks"]:
            grouped.setdefault((task["name"], task["machine_type"]), []).append(task)
        for (name, machine), tasks in grouped.items():
            seconds = sum(task["seconds"] for task in tasks)
            usd = sum(task["usd"] for task in tasks)
            lines.append(f"  {name:<18} {len(tasks):>3}x {seconds:>8,.1f} s  {machine:<15} ${usd:.5f}")
        lines.append(f"  train tasks' machine: {t['train_machine_type']} ({t['train_machine_from']})")
        lines += [f"  note: {note}" for note in t["notes"]]
    return "\n".join(lines) + "\n"
