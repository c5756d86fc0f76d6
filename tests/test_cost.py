"""`fleetops cost`: the price table, the serving arithmetic, traffic from the request log, a run's training cost."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fleetops import cost
from fleetops.data.sample import SAMPLE_SPEC
from fleetops.errors import UserError
from fleetops.platform import connect, local_uri
from fleetops.platform.endpoints import DeployedModel
from fleetops.serving.request_log import RequestLogWriter
from fleetops.spec import parse_spec
from fleetops_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
BRIEF_MACHINES = [
    *(f"n1-standard-{n}" for n in (2, 4, 8, 16)),
    *(f"n1-highmem-{n}" for n in (2, 4, 8)),
    *(f"e2-standard-{n}" for n in (2, 4, 8)),
    *(f"n2-standard-{n}" for n in (2, 4, 8)),
]


def small_table(**changes) -> dict:
    """A price table small enough to check by hand: two machine types, one region."""
    table = {
        "as_of": "2025-01-15",
        "source": "https://cloud.google.com/vertex-ai/pricing",
        "currency": "USD",
        "hours_per_month": 730,
        "pipeline_run_usd": 0.03,
        "machine_types": {"m-2": {"vcpus": 2, "memory_gib": 4}, "m-8": {"vcpus": 8, "memory_gib": 32}},
        "regions": {
            "r1": {
                "prediction_node_hour": {"m-2": 0.5, "m-8": 1.5},
                "training_hour": {"m-2": 0.6, "m-8": 1.8},
            }
        },
    }
    return table | changes


def inputs(**changes) -> cost.ServingInputs:
    """10 models of 100 MB, a 500 MB server, 30 req/s; a node serves 2 vCPUs x 10 req/s x 50% = 10 req/s."""
    values = {
        "models": cost.Figure(10, "test"),
        "rps": cost.Figure(30, "test"),
        "model_mb": cost.Figure(100, "test"),
        "server_mb": cost.Figure(500, "test"),
        "rps_per_vcpu": cost.Figure(10, "test"),
        "machine_type": "m-2",
        "min_replicas": 1,
        "max_replicas": 3,
        "target_cpu": 50,
    }
    return cost.ServingInputs(**(values | changes))


def by_name(options: list[cost.Option]) -> dict[str, cost.Option]:
    return {o.name: o for o in options}


# --- the price table --------------------------------------------------------------------------------


def test_the_shipped_table_is_dated_sourced_and_prices_the_common_machine_types():
    prices = cost.load_prices()
    assert prices.path == str(cost.PRICES_FILE)
    assert prices.source == "https://cloud.google.com/vertex-ai/pricing"
    assert prices.age_days(date(2025, 1, 1)) == 0
    text = cost.PRICES_FILE.read_text()
    assert "list prices as of the date below, to be checked against the source" in text
    for region in ("us-central1", "europe-west4"):
        for machine in BRIEF_MACHINES:
            assert prices.prediction_price(region, machine) > 0
    assert prices.machines["n1-standard-2"] == cost.Machine("n1-standard-2", 2, 7.5)
    assert prices.training_price("us-central1", "e2-standard-4") > 0  # Vertex Pipelines' default machine


def test_the_price_table_ships_as_package_data(tmp_path):
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    shipped = tmp_path / "fleetops" / "prices" / cost.PRICES_FILE.name
    assert shipped.read_text() == cost.PRICES_FILE.read_text()


def test_a_bad_price_file_names_every_field_at_fault(tmp_path):
    table = small_table()
    table["regions"]["r1"]["prediction_node_hour"]["n9-mega"] = 2.0  # no vCPUs or memory declared for it
    table["regions"]["r1"]["training_hour"]["m-8"] = -1.8
    del table["machine_types"]["m-2"]["vcpus"]
    del table["as_of"]
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(table))
    with pytest.raises(cost.PriceTableError) as caught:
        cost.load_prices(path)
    message = str(caught.value)
    assert f"price file {path} has 4 problem(s)" in message
    assert "regions.r1.prediction_node_hour.n9-mega: machine type missing from machine_types" in message
    assert "regions.r1.training_hour.m-8: must be a positive number of USD per hour (got -1.8)" in message
    assert "machine_types.m-2.vcpus: required field is missing" in message
    assert "as_of: required field is missing" in message


def test_a_price_file_override_is_what_the_cli_prices_with(tmp_path, capsys):
    spec = _spec_file(tmp_path, "serving:\n  machine_type: m-2\n")
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump(small_table()))
    output = tmp_path / "cost.json"
    code = main(
        ["cost", str(spec), "--home", str(tmp_path / "home"), "--prices", str(prices), "--region", "r1"]
        + ["--models", "4", "--rps", "0", "--output", str(output)]
    )
    assert code == 0
    report = json.loads(output.read_text())
    assert report["prices"]["file"] == str(prices)
    assert report["prices"]["as_of"] == "2025-01-15"
    dedicated = by_name_json(report)["dedicated"]
    assert dedicated["monthly_usd"] == 4 * 1 * 0.5 * 730
    assert "list prices as of 2025-01-15" in capsys.readouterr().out


def test_the_cli_refuses_a_bad_price_file_naming_the_field(tmp_path, capsys):
    spec = _spec_file(tmp_path, "")
    table = small_table()
    table["regions"]["r1"]["prediction_node_hour"]["m-2"] = -0.5
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump(table))
    assert main(["cost", str(spec), "--prices", str(prices), "--models", "1", "--home", str(tmp_path / "h")]) == 2
    assert "regions.r1.prediction_node_hour.m-2: must be a positive number" in capsys.readouterr().err


def test_an_unknown_machine_type_in_the_spec_names_the_known_ones(tmp_path, capsys):
    spec = _spec_file(tmp_path, "serving:\n  machine_type: n1-mega-3\n")
    assert main(["cost", str(spec), "--models", "2", "--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert "serving.machine_type 'n1-mega-3' is not in the price table" in err
    assert "known: n1-standard-2, n1-standard-4" in err
    prices = cost.parse_prices(small_table(), "small")
    with pytest.raises(UserError, match="region 'mars-1' is not in the price table small; known: r1"):
        prices.prediction_price("mars-1", "m-2")


# --- the serving arithmetic -------------------------------------------------------------------------


def test_the_three_options_by_hand():
    prices = cost.parse_prices(small_table(), "small")
    options = by_name(cost.serving_options(inputs(), prices, "r1"))
    # Dedicated: 10 endpoints of 3 req/s each; one 10 req/s node each: 10 nodes x $0.5 x 730 h.
    assert (options["dedicated"].nodes, options["dedicated"].monthly_usd) == (10, 3650.0)
    # Pool: 1,000 MB of models fit one node (4 GiB x 0.8 - 500 MB = 2,776.8 MB); 30 req/s need 3 nodes.
    assert (options["pool"].nodes, options["pool"].monthly_usd) == (3, 1095.0)
    # Fleet endpoint: 500 MB + 10 x 100 MB = 1,500 MB in 3,276.8 MB usable; 3 nodes for 30 req/s.
    assert (options["fleet"].nodes, options["fleet"].monthly_usd) == (3, 1095.0)
    assert all(o.fits for o in options.values())
    assert [o.name for o in cost.cheapest(list(options.values()))] == ["pool", "fleet"]
    assert "10 endpoints x 1 node(s) x $0.5000/node-hour x 730 h" == options["dedicated"].arithmetic


def test_memory_and_traffic_that_do_not_fit():
    prices = cost.parse_prices(small_table(), "small")
    options = by_name(cost.serving_options(inputs(model_mb=cost.Figure(400, "test")), prices, "r1"))
    # 4,000 MB of models: two pools (2,776.8 MB of room a node), 15 req/s each: 2 nodes each.
    assert (options["pool"].nodes, options["pool"].monthly_usd, options["pool"].fits) == (4, 1460.0, True)
    assert any("2 pools" in note for note in options["pool"].notes)
    # The fleet endpoint's working set (500 + 4,000 MB) does not fit m-2, whatever the node count; m-8 takes
    # it, and 30 req/s on one node (8 vCPUs x 10 x 50% = 40 req/s): $1.5 x 730 h.
    fleet = options["fleet"]
    assert not fleet.fits and "working set of 10 models needs 4,500 MB" in fleet.problems[0]
    assert "its cache holds 6" in fleet.problems[0]
    assert fleet.fits_on == {"machine_type": "m-8", "nodes": 1, "monthly_usd": 1095.0}
    assert [o.name for o in cost.cheapest(list(options.values()))] == ["pool"]

    busy = by_name(cost.serving_options(inputs(rps=cost.Figure(100, "test")), prices, "r1"))
    assert not busy["fleet"].fits
    assert busy["fleet"].problems == ["100.0 req/s needs 10 nodes; serving.max_replica_count is 3"]
    # Per-endpoint traffic from the log: the busiest endpoint decides whether dedicated fits.
    skewed = inputs(endpoint_rps={"a": 35.0, "b": 1.0})
    dedicated = by_name(cost.serving_options(skewed, prices, "r1"))["dedicated"]
    assert dedicated.nodes == 4 + 1 + 8 and not dedicated.fits


def test_the_spec_choice_reads_serving_cohosting_when_the_spec_has_it():
    spec = parse_spec(SAMPLE_SPEC.format(source="x.csv"))
    assert cost.choice(spec)[0] == "dedicated"
    for value, option in (("none", "dedicated"), ("pool", "pool")):
        assert cost.choice(SimpleNamespace(serving=SimpleNamespace(cohosting=value)))[0] == option


def test_runtime_figures_are_the_serving_runtime_s_from_the_lineage_record():
    record = {
        "serving": "float32",
        "metric": "auRoc",
        "variants": {"keras": {"load_ms": 70.0, "p50_ms": 0.8}, "float32": {"load_ms": 0.5, "p50_ms": 0.02}},
    }
    assert cost.runtime_figures(record) == {"model_mb": 0.17, "p50_ms": 0.02, "load_ms": 0.5}
    keras = record | {"serving": "keras"}
    assert cost.runtime_figures(keras) == {"model_mb": cost.DEFAULT_MODEL_MB, "p50_ms": 0.8, "load_ms": 70.0}
    assert cost.runtime_figures(record | {"serving": "int8"}) == {}  # no such variant measured
    assert cost.runtime_figures(None) == {} and cost.runtime_figures({"serving": "keras"}) == {}


# --- traffic from the request log -------------------------------------------------------------------


def test_requests_per_second_from_a_real_request_log(tmp_path):
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    writer = RequestLogWriter(tmp_path, flush_seconds=0.01)
    north = DeployedModel("d1", "churn-north", "1", "models/churn-north", "north")
    south = DeployedModel("d2", "churn-south", "1", "models/churn-south", "south")
    other = DeployedModel("d3", "other-x", "1", "models/other-x", "x")
    instance = {"tenure_months": 3}
    for second in range(60):  # the last minute: one request a second to north, with 3 instances each
        writer.log("churn-north", north, [instance] * 3, [0.1] * 3, at=now - timedelta(seconds=60 - second))
    for second in range(0, 60, 2):  # and one every other second to south
        writer.log("churn-south", south, [instance], [0.2], at=now - timedelta(seconds=60 - second))
    writer.log("other-x", other, [instance], [0.3], at=now - timedelta(seconds=30))
    writer.log("churn-north", north, [instance], [0.1], at=now - timedelta(hours=30))  # outside the window
    writer.close()

    traffic = cost.traffic_from_log(tmp_path, 24, 1.0, {"churn-north": 1.0, "churn-south": 0.5}, now=now)
    assert traffic is not None
    assert traffic.requests == 90 and traffic.seconds == 60
    assert traffic.endpoint_rps == {"churn-north": 1.0, "churn-south": 1.0}  # south logged half its requests
    assert traffic.rps == 2.0 and traffic.models == 2
    everything = cost.traffic_from_log(tmp_path, 24, 1.0, now=now)
    assert everything.requests == 91 and everything.models == 3
    assert cost.traffic_from_log(tmp_path, 24, 1.0, {"nobody": 1.0}, now=now) is None
    assert cost.traffic_from_log(tmp_path / "empty", 24, 1.0, now=now) is None


# --- training ---------------------------------------------------------------------------------------


def test_task_durations_pair_kfp_local_log_lines_across_midnight(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        "23:59:58.500 - INFO - Executing task \x1b[96m'train'\x1b[0m\n"
        "23:59:59.000 - INFO - Executing task \x1b[96m'train'\x1b[0m\n"
        "some executor output without a clock\n"
        "00:00:01.500 - INFO - Task \x1b[96m'train'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
        "00:00:04.000 - INFO - Task \x1b[96m'train'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m\n"
    )
    assert cost.task_durations(log) == [
        cost.TaskTime("train", "SUCCESS", 3.0),
        cost.TaskTime("train", "FAILURE", 5.0),
    ]


def test_train_limits_map_to_the_cheapest_machine_with_as_much():
    prices = cost.load_prices()
    assert cost.memory_gib("16G") == pytest.approx(14.90, abs=0.01)
    assert cost.memory_gib("15Gi") == 15 and cost.cpu_count("500m") == 0.5
    assert cost.machine_for_limits(prices, "us-central1", "4", "16G") == "e2-standard-4"
    assert cost.machine_for_limits(prices, "us-central1", "8", "30G") == "e2-standard-8"
    assert cost.machine_for_limits(prices, "us-central1", "500m", "1G") == "e2-highmem-2"
    with pytest.raises(UserError, match="no machine type with a training price in us-central1 has 96 vCPUs"):
        cost.machine_for_limits(prices, "us-central1", "96", "16G")


def test_the_default_train_limits_are_the_pipelines():
    from pipelines.training import fleet_training

    given = fleet_training.component_spec.inputs
    assert given["train_cpu_limit"].default == cost.DEFAULT_TRAIN_CPU
    assert given["train_memory_limit"].default == cost.DEFAULT_TRAIN_MEMORY


# --- end to end on a tiny twin home -----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-segment fleet trained once by `fleetops run` on a fresh twin home (a real kfp.local run)."""
    work = tmp_path_factory.mktemp("cost-fleet")
    spec = work / "fleet.yaml"
    home = work / "home"
    assert main(["sample", str(work / "churn.csv"), "--segments", "2", "--rows", "120", "--spec", str(spec)]) == 0
    assert main(["run", str(spec), "--home", str(home)]) == 0
    return spec, home


@pytest.mark.slow
def test_the_cli_prices_a_trained_fleet_and_writes_next_to_its_run(trained, capsys):
    spec, home = trained
    capsys.readouterr()
    assert main(["cost", str(spec), "--home", str(home)]) == 0
    out = capsys.readouterr().out
    run = cost.latest_run(home, "churn")
    report = json.loads((run / "cost.json").read_text())
    assert f"wrote {run / 'cost.json'}" in out

    assert report["inputs"]["models"] == {"value": 2, "source": "the spec's data: 2 values of region"}
    # Evaluation measured each champion's runtime; the sample models are served by their float32 flatbuffers.
    assert report["inputs"]["model_mb"] == {"value": 0.17, "source": "mean of 2 of 2 models' evaluated runtimes"}
    options = by_name_json(report)
    price = cost.load_prices().prediction_price("us-central1", "n1-standard-2")
    assert options["dedicated"]["monthly_usd"] == round(2 * price * 730, 2)
    assert options["pool"]["monthly_usd"] == options["fleet"]["monthly_usd"] == round(price * 730, 2)
    assert report["serving"]["chosen"] == "dedicated"
    assert report["serving"]["cheapest_that_fits"] == ["pool", "fleet"]
    assert "the spec's choice: dedicated endpoints" in out
    assert "cheapest that fits: co-hosted pool and one fleet endpoint" in out

    # The training run: every task of the real run, the train tasks on their limits' machine.
    training = report["training"]
    names = [t["name"] for t in training["tasks"]]
    assert names.count("train") == 2 and "ingest" in names and "summarize" in names
    assert all(t["seconds"] > 0 for t in training["tasks"])
    assert training["train_machine_type"] == "e2-standard-4"
    train_price = cost.load_prices().training_price("us-central1", "e2-standard-4")
    compute = sum(t["seconds"] for t in training["tasks"]) / 3600 * train_price
    assert training["total_usd"] == pytest.approx(compute + 0.03, abs=1e-4)


@pytest.mark.slow
def test_the_cli_reads_traffic_and_runtime_measurements_from_the_twin(trained, capsys, tmp_path):
    spec, home = trained
    platform = connect(local_uri(home))
    endpoints = [e for e in platform.endpoints.list() if e.labels.get("fleet") == "churn"]
    assert len(endpoints) == 2
    now = datetime.now(UTC)
    writer = RequestLogWriter(home, flush_seconds=0.01)
    for endpoint in endpoints:
        deployed = endpoint.deployed_models[0]
        for second in range(1, 121):
            writer.log(endpoint.endpoint_id, deployed, [{"x": 1}], [0.5], at=now - timedelta(seconds=second))
    writer.close()
    # What evaluation measured for each champion, as the run registered it.
    served = []
    for endpoint in endpoints:
        deployed = endpoint.deployed_models[0]
        record = platform.registry.get_version(deployed.model_id, deployed.version_id).lineage["runtimes"]
        served.append(cost.runtime_figures(record))
    assert all(figures["p50_ms"] > 0 for figures in served)
    output = tmp_path / "cost.json"
    capsys.readouterr()
    assert main(["cost", str(spec), "--home", str(home), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    inputs = json.loads(output.read_text())["inputs"]
    assert inputs["rps"]["value"] == pytest.approx(240 / 120, rel=0.05)  # 2 endpoints x 1 req/s
    assert inputs["rps"]["source"].startswith("request log: 240 requests")
    assert inputs["working_set"]["value"] == 2
    mean_mb = sum(f["model_mb"] for f in served) / 2
    assert inputs["model_mb"] == {"value": mean_mb, "source": "mean of 2 of 2 models' evaluated runtimes"}
    p50 = sum(f["p50_ms"] for f in served) / 2
    assert inputs["rps_per_vcpu"]["value"] == pytest.approx(min(cost.DEFAULT_RPS_PER_VCPU, 1000 / p50))
    assert re.search(r"memory per model .+ mean of 2 of 2 models' evaluated runtimes", out)


def by_name_json(report: dict) -> dict[str, dict]:
    return {o["name"]: o for o in report["serving"]["options"]}


def _spec_file(tmp_path: Path, extra_yaml: str) -> Path:
    """The sample spec over a file that need not exist (`--models` is given), plus `extra_yaml`."""
    text = SAMPLE_SPEC.format(source="churn.csv") + extra_yaml
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path
