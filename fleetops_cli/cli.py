"""The `fleetops` command: compile, run locally, submit to Vertex or a KFP cluster, and the demo.

fleetops demo                         generate sample data, train the fleet twice locally
fleetops sample churn.csv --segments N --rows R --spec fleet.yaml   sample data and spec, any fleet size
fleetops compile --image URI          every pipeline to build/pipelines/*.yaml
fleetops run fleet.yaml               run the training pipeline locally (kfp.local + local twin)
fleetops submit fleet.yaml --platform vertex://PROJECT/REGION?staging_bucket=gs://b
fleetops submit fleet.yaml --kfp-host http://kfp.example:8080
fleetops models [--card MODEL[@V]]    what the local registry holds; a version's model card
fleetops cost fleet.yaml              monthly serving cost per hosting option, and a training run's cost
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetops.errors import UserError
from fleetops.names import OUTPUT_RETURN_VALUE, pipeline_arguments

if TYPE_CHECKING:
    from fleetops.platform.registry import ModelVersion

DEFAULT_BUILD = "build/pipelines"
TRAINING = "fleet_training"
SERVE_DESCRIPTION = """Serve the local twin's endpoints over Vertex's REST API.

binding:
  Loopback by default: 127.0.0.0/8, ::1, or a name (localhost) that resolves only to those.
  Any other address (0.0.0.0, ::, a LAN address) needs --allow-remote and also either a
  token or --no-auth; --no-auth prints a warning.

token:
  Requests must send 'Authorization: Bearer TOKEN' when a token is given: by --token-file
  PATH (surrounding whitespace stripped) or the FLEETOPS_SERVE_TOKEN environment variable,
  which other local users cannot see in ps, or by --token, which they can (a flag wins over
  the variable). An empty token is refused. /health and /ready answer without a token;
  /metrics needs it.

many models:
  A deployed model loads on its first request, or at start when --prewarm names it:
  top:N (the N deployed models most requested in the request log), all, or endpoint ids,
  comma-separated. Loaded models are kept within --cache-models N and --cache-memory SIZE
  (e.g. 2GB), least recently used first out; without them, every model requested stays.
  /ready is 200 once the prewarmed models are loaded. /metrics has per-model requests,
  errors and latency, load times, cache hits, misses and evictions (Prometheus format).
"""


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before any TensorFlow import: keep the output readable
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.compile import compile_all

    for name, path in compile_all(args.output, args.image).items():
        print(f"compiled {name}: {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fleetops.platform import local_uri
    from fleetops.spec import load_spec

    spec = load_spec(args.spec)
    home = _home(args.home)
    ok, _ = _run_pipeline(spec, home, local_uri(home), f"fleet '{spec.name}'", TRAINING)
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from fleetops.platform import local_uri
    from fleetops_cli.demo import run_demo

    home = _home(args.home)

    def run(spec: Any, pipeline: str, label: str) -> tuple[bool, Any]:
        return _run_pipeline(spec, home, local_uri(home), label, pipeline)

    return run_demo(home, args.segments, args.rows, run, lambda h: _registry_listing(h) + "\n" + _endpoint_listing(h))


def cmd_sample(args: argparse.Namespace) -> int:
    from fleetops.data.sample import SAMPLE_SPEC, check_sample_path, make_churn, save_table

    try:
        output = check_sample_path(args.output)  # before generating: a large fleet takes a while
        frame = make_churn(args.rows, args.segments, args.seed, args.size_spread)
    except ValueError as exc:
        # The message starts with the library's parameter name; the user typed a flag.
        name, _, rest = str(exc).partition(" ")
        flag = {"segments": "--segments", "rows_per_segment": "--rows", "size_spread": "--size-spread"}.get(name)
        raise UserError(f"{flag} {rest}" if flag else str(exc)) from exc
    save_table(frame, output)
    print(f"wrote {len(frame):,} rows, {args.segments:,} segments to {output}")
    if args.spec:
        spec_path = Path(args.spec)
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(SAMPLE_SPEC.format(source=_relative_to(output, spec_path.parent)))
        print(f"wrote fleet spec {spec_path} (train it with: fleetops run {spec_path})")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from fleetops.spec import load_spec

    spec = load_spec(args.spec)
    template = _template(args)
    name = args.job_id or f"{spec.name}-training-{datetime.now():%Y%m%d-%H%M%S}"
    if args.kfp_host:
        from fleetops_cli.submit import submit_to_kfp

        run_id = submit_to_kfp(
            args.kfp_host,
            template,
            pipeline_arguments(spec.to_json(), args.platform or "local", args.serving_image),
            run_name=name,
            enable_caching=args.caching,
        )
        print(f"submitted run {run_id} to {args.kfp_host}")
        return 0
    from fleetops.platform import PipelineRun

    uri, platform = _platform_for(args, spec, _home(args.home))
    run = PipelineRun(
        template,
        pipeline_arguments(spec.to_json(), uri, args.serving_image),
        display_name=name,
        job_id=args.job_id,
        enable_caching=args.caching,
        labels={"fleet": spec.name},
    )
    submission = platform.submit_pipeline(run, dry_run=args.dry_run)
    if submission.request is None and submission.ok is not None:  # ran here, to its end
        print(f"{name}: {'finished' if submission.ok else 'FAILED'}; run folder {submission.name}")
    return _reported(submission, "submitted")


def _platform_for(args: argparse.Namespace, spec: Any, home: Path) -> tuple[str, Any]:
    """The platform a submission or schedule goes to (`--platform`, else the local twin at `home`), after it
    has refused a data source its tasks could not read; and its URI, which the pipeline's tasks get."""
    from fleetops.platform import connect, local_uri

    uri = args.platform or local_uri(home)
    platform = connect(uri, credentials=_dry_run_credentials(args.dry_run))
    platform.check_source(spec.data.source)
    return uri, platform


def _reported(submission: Any, verb: str) -> int:
    """Print a dry run's request, or what a remote platform was sent; the exit code (1: a local run failed)."""
    if submission.request is not None:
        print(json.dumps(submission.request, indent=2))
    elif submission.ok is None:
        print(f"{verb} {submission.name}")
    return 0 if submission.ok is not False else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from fleetops.serving.server import check_cache_limits, serve

    check_cache_limits(args.cache_models, args.cache_memory, args.prewarm or "")
    token = _serve_token(args)
    warning = _check_exposure(args.host, args.allow_remote, token, args.no_auth)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    home = _home(args.home)
    print(f"fleetops serve: endpoints of {home} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    serve(
        home,
        args.host,
        args.port,
        args.workers,
        token,
        args.max_body_bytes,
        args.header_timeout,
        args.keep_alive_timeout,
        prewarm=args.prewarm or "",
        cache_models=args.cache_models,
        cache_memory=args.cache_memory,
    )
    return 0


def _serve_token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token, --token-file or FLEETOPS_SERVE_TOKEN (in that order); None if none."""
    import os

    from fleetops.serving.server import check_token

    if args.token is not None:
        return check_token(args.token, "--token")
    if args.token_file is not None:
        try:
            text = Path(args.token_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--token-file {args.token_file}: cannot read it: {exc}") from None
        return check_token(text.strip(), f"--token-file {args.token_file}")
    if "FLEETOPS_SERVE_TOKEN" in os.environ:
        return check_token(os.environ["FLEETOPS_SERVE_TOKEN"], "FLEETOPS_SERVE_TOKEN")
    return None


def _check_exposure(host: str, allow_remote: bool, token: str | None, no_auth: bool) -> str | None:
    """Refuse to expose the server by accident; the warning to print when it is exposed on purpose."""
    from fleetops.serving.server import is_loopback

    if no_auth and token is not None:
        raise UserError("--no-auth contradicts the token given (--token, --token-file or FLEETOPS_SERVE_TOKEN)")
    if is_loopback(host):
        return None
    if not allow_remote:
        raise UserError(f"--host {host} would accept connections from other machines; add --allow-remote to mean it")
    if token is None and not no_auth:
        raise UserError(
            f"--host {host} with --allow-remote and no token lets anyone who reaches the port call the models: "
            "give a token (--token-file PATH or FLEETOPS_SERVE_TOKEN) or add --no-auth to mean it"
        )
    if token is None:
        return (
            f"WARNING: fleetops serve on {host} without authentication (--no-auth): anyone who can reach "
            "the port can call the models"
        )
    return None


def cmd_serve_container(args: argparse.Namespace) -> int:
    """The Vertex custom serving container: AIP_STORAGE_URI, AIP_HTTP_PORT, AIP_PREDICT_ROUTE, AIP_HEALTH_ROUTE."""
    import os

    from fleetops.serving.server import run_uvicorn

    if not os.environ.get("AIP_STORAGE_URI"):
        raise UserError("serve-container needs AIP_STORAGE_URI (Vertex sets it to the model's artifact folder)")
    port = int(os.environ.get("AIP_HTTP_PORT", "8080"))
    run_uvicorn(args.host, port, 1, args.header_timeout, args.keep_alive_timeout)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from fleetops.batch import fleet_batch_predict
    from fleetops.platform import connect, local_uri
    from fleetops.spec import load_spec

    spec = load_spec(args.spec)
    home = _home(args.home)
    output = Path(args.output) if args.output else home / "batch" / datetime.now().strftime("%Y%m%d-%H%M%S")
    source = args.source or spec.data.source
    result = fleet_batch_predict(spec, connect(local_uri(home)), source, output, args.version)
    print(json.dumps(result.summary(), indent=2))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from fleetops.platform import PipelineRun
    from fleetops.spec import load_spec
    from pipelines.compile import compile_all

    spec = load_spec(args.spec)
    home = _home(args.home)
    uri, platform = _platform_for(args, spec, home)
    run = PipelineRun(
        compile_all(home / "build", args.image)[args.pipeline],
        pipeline_arguments(spec.to_json(), uri, args.serving_image),
        display_name=f"{spec.name}-{args.pipeline.replace('_', '-')}",
        labels={"fleet": spec.name},
    )
    submission = platform.schedule_pipeline(
        run, cron=args.cron, every_minutes=args.every_minutes, runs=args.runs, dry_run=args.dry_run
    )
    return _reported(submission, "created")


def cmd_cost(args: argparse.Namespace) -> int:
    """Monthly serving cost of the fleet for each hosting option, and the latest run's training cost."""
    from fleetops import cost
    from fleetops.platform import connect, local_uri
    from fleetops.spec import load_spec

    spec = load_spec(args.spec)
    home = _home(args.home)
    prices = cost.load_prices(args.prices)
    prices.prediction_price(args.region, prices.machine(spec.serving.machine_type, "serving.machine_type").name)
    inputs = cost.serving_inputs(
        spec,
        prices,
        home,
        connect(local_uri(home)) if home.is_dir() else None,  # no home: nothing registered, logged or run
        models=args.models,
        rps=args.rps,
        model_mb=args.memory_per_model,
        server_mb=args.server_memory,
        rps_per_node=args.rps_per_node,
        working_set=args.working_set,
    )
    run_dir = Path(args.run).resolve() if args.run else cost.latest_run(home, spec.name)
    if run_dir is not None and not (run_dir / "run.log").is_file():
        raise UserError(f"--run {run_dir}: no run.log there (a run folder under <home>/runs/)")
    training = cost.training_cost(run_dir, prices, args.region, args.training_machine) if run_dir else None
    report = cost.build_report(spec, inputs, prices, args.region, training)
    print(cost.render(report), end="")
    output = Path(args.output) if args.output else (run_dir / "cost.json" if run_dir else None)
    if output is None:
        print("\nno run to write cost.json next to: give --output PATH to keep the JSON")
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the fleet scorecard (HTML, and Markdown beside it) of the latest run that trained or monitored."""
    from fleetops.scorecard import render_scorecard, run_inputs
    from fleetops.spec import load_spec

    fleet = load_spec(args.spec).name if args.spec else None
    home = _home(args.home)
    runs = home / "runs"
    candidates = (
        [Path(args.run).resolve()] if args.run else sorted(runs.iterdir(), reverse=True) if runs.is_dir() else []
    )
    found, why = None, []
    for run_dir in candidates:
        try:
            inputs = run_inputs(run_dir)
        except UserError as exc:  # a run that failed early or serves: an older one may have trained or monitored
            why.append(str(exc))
            continue
        if fleet is None or inputs["fleet"] == fleet:
            found = (run_dir, inputs)
            break
    if found is None:
        which = f" of fleet {fleet!r}" if fleet else ""
        detail = f" ({why[0]})" if args.run and why else ""
        raise UserError(f"no run that trained or monitored{which} under {runs}{detail}: `fleetops run SPEC` first")
    run_dir, inputs = found
    page, markdown = render_scorecard(**inputs)
    output = Path(args.output).resolve() if args.output else run_dir / "scorecard.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    output.with_suffix(".md").write_text(markdown)
    print(output)
    if args.open:
        import webbrowser

        webbrowser.open(output.as_uri())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.card:
        print(_model_card(_home(args.home), args.card), end="")
        return 0
    print(_registry_listing(_home(args.home)))
    print(_endpoint_listing(_home(args.home)))
    return 0


def _model_card(home: Path, reference: str) -> str:
    """`MODEL[@VERSION|@ALIAS]`'s model card (Markdown), as registered with the version (the default version
    without @), after one line saying which version it is, its aliases now, and whether the card's JSON still
    has the sha256 its `model-card-sha256` label recorded at registration."""
    from fleetops.fingerprints import directory_sha256
    from fleetops.model_card import CARD_JSON, LABEL_MODEL_CARD_SHA256, read_card
    from fleetops.platform import connect, local_uri

    model_id, _, version = reference.partition("@")
    registry = connect(local_uri(home)).registry
    found = registry.get_version(model_id, version or None)  # NotFoundError: a UserError, reported as such
    path = registry.artifact_path(found)
    stored = read_card(path)
    if stored is None:
        raise UserError(
            f"version {found.version_id} of model {model_id!r} has no model card: it was registered before "
            "fleetops wrote cards, or not by a fleet run"
        )
    recorded = found.labels.get(LABEL_MODEL_CARD_SHA256)
    check = ""
    if recorded:
        ok = directory_sha256(path / CARD_JSON) == recorded
        check = "; card sha256 matches its label" if ok else "; WARNING: the card's sha256 differs from its label"
    aliases = ", ".join(found.aliases) or "none"
    return f"<!-- {model_id} version {found.version_id}, aliases now: {aliases}{check} -->\n\n{stored[1]}"


def cmd_release(args: argparse.Namespace) -> int:
    from fleetops.deployment import promote_fleet, rollback_fleet
    from fleetops.platform import connect, local_uri

    platform = connect(args.platform or local_uri(_home(args.home)))
    done = (promote_fleet if args.command == "promote" else rollback_fleet)(platform, args.fleet)
    for item in done:
        print(json.dumps(item))
    if not done:
        print(f"fleet {args.fleet!r} has no endpoint with a canary")
    return 0


def _run_pipeline(spec: Any, home: Path, platform: str, label: str, pipeline: str) -> tuple[bool, Any]:
    from fleetops.platform.local.pipeline_runs import run_compiled
    from pipelines.compile import compile_all

    template = compile_all(home / "build")[pipeline]
    arguments = pipeline_arguments(spec.to_json(), platform)
    run = run_compiled(template, arguments, home)
    if not run.ok:
        print(f"{label}: FAILED after {run.seconds:.0f}s; full log {run.log_path}", file=sys.stderr)
        return False, run
    output = run.outputs.get(OUTPUT_RETURN_VALUE)
    if output:
        print(f"\n{output}")
    print(f"{label}: finished in {run.seconds:.0f}s; log {run.log_path}\n", flush=True)
    return True, run


def _registry_listing(home: Path) -> str:
    """Each model's versions with their aliases, primary metric on their test split and architecture; then,
    for each version whose lineage records the trainer's choice, what it chose among its candidates and why."""
    from fleetops.platform import connect, local_uri

    registry = connect(local_uri(home)).registry
    lines = ["registered models:"]
    for model_id in registry.list_models():
        versions = registry.list_versions(model_id)
        lines.append(f"  {model_id:<24} {', '.join(_version_listing(v) for v in versions)}")
        lines += [f"    {text}" for v in versions if (text := _selection_listing(v))]
    return "\n".join(lines) + "\n"


def _version_listing(version: ModelVersion) -> str:
    """`v2 [champion, default] auRoc 0.8512 (gbt)`; "undefined" when the metric was undefined on the test split."""
    text = f"v{version.version_id}" + (f" [{', '.join(version.aliases)}]" if version.aliases else "")
    metric = version.lineage.get("primary_metric")
    if metric is not None:  # else registered outside a fleet run: no evaluation in its lineage
        value = version.lineage.get("test_value")
        text += f" {metric} {'undefined' if value is None else f'{value:.4f}'}"
    architecture = version.lineage.get("architecture")
    return f"{text} ({architecture})" if architecture else text


def _selection_listing(version: ModelVersion) -> str:
    """`v2 chose gbt: gbt has the best validation auRoc: 0.8234 (next: ensemble 0.8211); failed: dnn`."""
    selection = version.lineage.get("selection")
    if not isinstance(selection, dict) or not selection.get("chosen"):
        return ""
    text = f"v{version.version_id} chose {selection['chosen']}"
    text += f": {selection['reason']}" if selection.get("reason") else ""
    failed = selection.get("failed")
    return text + (f"; failed: {', '.join(failed)}" if failed else "")


def _endpoint_listing(home: Path) -> str:
    from fleetops.platform import connect, local_uri

    lines = ["endpoints (deployed model: version, traffic %, deployment resource pool when co-hosted):"]
    for endpoint in connect(local_uri(home)).endpoints.list():
        shown = ", ".join(
            f"{m.deployed_model_id}: v{m.version_id} {endpoint.traffic_split.get(m.deployed_model_id, 0)}%"
            + (f" in pool {m.settings.deployment_resource_pool}" if m.settings.deployment_resource_pool else "")
            for m in endpoint.deployed_models
        )
        lines.append(f"  {endpoint.endpoint_id:<24} {shown or 'nothing deployed'}")
    return "\n".join(lines) + "\n"


def _dry_run_credentials(dry_run: bool) -> Any:
    """A dry run sends nothing, so it needs no real credentials; otherwise the SDK finds the defaults."""
    if not dry_run:
        return None
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


def _relative_to(path: Path, folder: Path) -> str:
    """`path` as the spec should name it: relative to the spec's folder when possible (load_spec
    resolves it from there, so the two files can move together), else absolute."""
    import os

    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return str(path.resolve())


def _home(value: str | None) -> Path:
    from fleetops.platform import local_home

    return local_home("local") if value is None else Path(value).resolve()


def _template(args: argparse.Namespace) -> Path:
    from pipelines.compile import compile_all

    if args.template:
        return Path(args.template)
    return compile_all(DEFAULT_BUILD, args.image)[TRAINING]


def _seconds(text: str) -> float:
    import math

    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def _number_at_least(text: str, low: float, strict: bool, kind: type = float) -> float:
    import math

    try:
        value = kind(text)
    except ValueError:
        value = math.nan
    if not (value > low if strict else value >= low) or value == math.inf or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'positive' if strict else 'non-negative'} number")
    return value


def _positive(text: str) -> float:
    return _number_at_least(text, 0, True)


def _non_negative(text: str) -> float:
    return _number_at_least(text, 0, False)


def _positive_int(text: str) -> int:
    return int(_number_at_least(text, 0, True, int))


def _timeout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--header-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose request headers are not complete this long after it opened or the "
        "request began, with a 408 (default 10)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="close a keep-alive connection idle this long between requests (default 5)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetops", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile every pipeline to YAML")
    p.add_argument("--output", default=DEFAULT_BUILD)
    p.add_argument("--image", default=None, help="components image URI for every executor")
    p.set_defaults(handler=cmd_compile)

    p = sub.add_parser("run", help="run the training pipeline locally (kfp.local and the local twin)")
    p.add_argument("spec", help="fleet spec YAML")
    p.add_argument("--home", default=None, help="local twin home (default $FLEETOPS_HOME or ./.fleetops)")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("demo", help="train, serve, monitor and retrain a sample fleet on the local twin")
    p.add_argument("--home", default=None)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--rows", type=int, default=800, help="rows per segment")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("sample", help="write generated churn data of any fleet size (and a fleet spec for it)")
    p.add_argument("output", help="OUT.csv or OUT.parquet")
    p.add_argument("--segments", type=int, default=4, help="regions, 1 to 100,000 (default 4)")
    p.add_argument("--rows", type=int, default=600, help="rows per segment (default 600)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--size-spread", type=float, default=0.0, help="vary segment sizes: lognormal sigma, 0 to 2")
    p.add_argument("--spec", default=None, help="also write a fleet spec for the data here (SPEC.yaml)")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser(
        "submit", help="submit the training pipeline to Vertex AI Pipelines or a KFP cluster (or run it here)"
    )
    p.add_argument("spec", help="fleet spec YAML")
    p.add_argument(
        "--platform", default=None, help="vertex://PROJECT/REGION?staging_bucket=gs://...&... (default: run it here)"
    )
    p.add_argument("--home", default=None, help="the local twin's home, when running here")
    p.add_argument("--kfp-host", default=None, help="KFP API endpoint (submits there instead of Vertex)")
    p.add_argument("--template", default=None, help="compiled YAML (default: compile now)")
    p.add_argument("--image", default=None, help="components image when compiling")
    p.add_argument("--serving-image", default="", help="serving container for registered models")
    p.add_argument("--job-id", default=None)
    p.add_argument("--no-cache", dest="caching", action="store_const", const=False, default=None)
    p.add_argument(
        "--dry-run", action="store_true", help="print the createPipelineJob request Vertex would get; send nothing"
    )
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser(
        "serve",
        help="serve the local twin's endpoints over Vertex's REST API",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--home", default=None)
    p.add_argument("--host", default="127.0.0.1", help="address or name to bind (default 127.0.0.1)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    p.add_argument(
        "--no-auth", action="store_true", help="with --allow-remote: serve without a token, on purpose (warns)"
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    token = p.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file", default=None, metavar="PATH", help="require 'Authorization: Bearer TOKEN', TOKEN read from PATH"
    )
    token.add_argument(
        "--token", default=None, help="require 'Authorization: Bearer TOKEN' (other local users see it in ps)"
    )
    p.add_argument("--max-body-bytes", type=int, default=1_572_864, help="larger request bodies get a 413")
    p.add_argument(
        "--prewarm",
        default=None,
        metavar="WHICH",
        help="load these models at start (the others on their first request): top:N, the N deployed models most "
        "requested in the request log; all; or endpoint ids; comma-separated",
    )
    p.add_argument(
        "--cache-models", type=int, default=None, metavar="N", help="keep at most N models loaded per worker"
    )
    p.add_argument(
        "--cache-memory",
        default=None,
        metavar="SIZE",
        help="keep the loaded models' measured memory under SIZE per worker (e.g. 2GB, 512MB, 1.5GiB)",
    )
    _timeout_arguments(p)
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("serve-container", help="the Vertex custom serving container (reads AIP_* variables)")
    p.add_argument("--host", default="0.0.0.0", help="inside a container the server must listen on all interfaces")
    _timeout_arguments(p)
    p.set_defaults(handler=cmd_serve_container)

    for name, text in (("promote", "give every canary of a fleet all traffic"), ("rollback", "undeploy every canary")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--fleet", required=True, help="the fleet's name (its endpoints' `fleet` label)")
        p.add_argument("--home", default=None)
        p.add_argument("--platform", default=None, help="platform URI (default: the local twin)")
        p.set_defaults(handler=cmd_release)

    p = sub.add_parser("batch-predict", help="score a table with each segment's model (local twin)")
    p.add_argument("spec", help="fleet spec YAML")
    p.add_argument("--source", default=None, help="file, SQL or bq:// table (default: the spec's data source)")
    p.add_argument("--version", default="champion", help="alias or version id for every segment")
    p.add_argument("--output", default=None, help="folder for predictions.parquet and errors.parquet")
    p.add_argument("--home", default=None)
    p.set_defaults(handler=cmd_batch)

    p = sub.add_parser("schedule", help="run a pipeline on a schedule: locally every N minutes, or a Vertex schedule")
    p.add_argument("spec", help="fleet spec YAML")
    p.add_argument("--pipeline", default="continuous_training", choices=["continuous_training", "fleet_training"])
    p.add_argument("--every-minutes", type=float, default=None, help="local: minutes between run starts")
    p.add_argument("--runs", type=int, default=None, help="local: stop after this many runs (default: until Ctrl-C)")
    p.add_argument("--home", default=None)
    p.add_argument("--platform", default=None, help="vertex://PROJECT/REGION?... for a Vertex PipelineJobSchedule")
    p.add_argument("--cron", default=None, help="Vertex: cron expression, e.g. '0 * * * *'")
    p.add_argument("--image", default=None)
    p.add_argument("--serving-image", default="")
    p.add_argument("--dry-run", action="store_true", help="print what would run or be sent; run and send nothing")
    p.set_defaults(handler=cmd_schedule)

    p = sub.add_parser(
        "cost", help="monthly serving cost for each hosting option, and a training run's cost (Vertex AI prices)"
    )
    p.add_argument("spec", help="fleet spec YAML")
    p.add_argument("--home", default=None, help="local twin home: registry, request log and runs/")
    p.add_argument("--prices", default=None, metavar="FILE", help="price table (default: the shipped one)")
    p.add_argument("--region", default="us-central1", help="region of the price table (default us-central1)")
    p.add_argument(
        "--models", type=_positive_int, default=None, metavar="N", help="fleet size (default: the spec's data)"
    )
    p.add_argument(
        "--rps", type=_non_negative, default=None, metavar="RPS", help="requests/s (default: the request log)"
    )
    p.add_argument("--memory-per-model", type=_positive, default=None, metavar="MB", help="memory of a loaded model")
    p.add_argument(
        "--server-memory", type=_non_negative, default=None, metavar="MB", help="a serving process before its models"
    )
    p.add_argument(
        "--rps-per-node",
        type=_positive,
        default=None,
        metavar="RPS",
        help="requests/s one node serves at the CPU target",
    )
    p.add_argument(
        "--working-set", type=_positive_int, default=None, metavar="N", help="models the fleet endpoint keeps loaded"
    )
    p.add_argument("--run", default=None, metavar="DIR", help="the run to price (default: the fleet's latest)")
    p.add_argument(
        "--training-machine",
        default=None,
        metavar="TYPE",
        help="machine type of the train tasks (default: their limits)",
    )
    p.add_argument("--output", default=None, metavar="PATH", help="JSON report (default: <run>/cost.json)")
    p.set_defaults(handler=cmd_cost)

    p = sub.add_parser("report", help="write the fleet scorecard (HTML and Markdown) of the latest run")
    p.add_argument("spec", nargs="?", default=None, help="fleet spec YAML: its fleet's latest run (default: any fleet)")
    p.add_argument("--home", default=None, help="local twin home with runs/")
    p.add_argument("--run", default=None, metavar="DIR", help="the run (default: the latest that trained or monitored)")
    p.add_argument("--output", default=None, metavar="PATH", help="the page (default: <run>/scorecard.html)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("models", help="list the local registry, or print a version's model card")
    p.add_argument("--home", default=None)
    p.add_argument(
        "--card",
        default=None,
        metavar="MODEL[@VERSION|@ALIAS]",
        help="print the model card (Markdown) registered with this version (default: the default version)",
    )
    p.set_defaults(handler=cmd_models)
    return parser


if __name__ == "__main__":
    sys.exit(main())
