"""Model cards: what a registered model version is, what it was made from, how well it does and why it serves.

Every version a fleet run registers carries a card, in JSON (`model_card.json`) and Markdown
(`model_card.md`). The JSON uses the field names of Google's Model Card Toolkit schema (v0.0.2:
`model_details`, `model_parameters`, `quantitative_analysis`, `considerations`), written here by
hand: the toolkit package pins old protobuf and TensorFlow releases, and the schema is plain JSON.
What the schema has no field for is added under names of our own, and only these:

- `model_parameters.architecture` (the architecture's name) and `hyperparameters`;
- each `model_parameters.data` entry's `sha256`, `rows` (and the training data's `validation_rows`);
- a sliced `performance_metrics` entry's `rows` (the slice's test rows);
- `quantitative_analysis.fairness`: the evaluation's `fairness` results as they are, when it has them;
- `fleetops`: the champion decision and its reason, the architecture selection (every candidate's
  validation and test value, the chosen one, why, and the candidates that failed with why), the identity.

Where the card lives: in the artifact directory, written just before the upload (`write_card`).
So it is stored wherever the version's artifact is (the twin's store, the run's bucket on
Vertex), `fleetops models --card` reads it back through `ModelRegistry.artifact_path`, and the
artifact's sha256 (the serving tamper check) covers it. The version's identity does not move: it is
computed when the model is saved, from its weights, configuration and `IDENTITY_METADATA_KEYS`
(`fleetops.fingerprints`), none of which the card touches; an artifact saved without an identity
gets its bytes' sha256 from before the card as one. The card holds no clock time, so registering
the same evaluation again writes the same bytes, and a folder that already is a registered
version's artifact keeps its card (`place_card`).

On Vertex the version's description carries a short Markdown summary (`card_summary`), and the
label `model-card-sha256` the JSON card's sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetops.evaluation.metrics import json_safe

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"
CARD_FILES = (CARD_JSON, CARD_MARKDOWN)
LABEL_MODEL_CARD_SHA256 = "model-card-sha256"
SCHEMA_VERSION = "0.0.2"
# The google-cloud-aiplatform SDK (2.7) neither documents nor enforces a length for a model's
# description or version description, so this is our own budget for the card's part of it, kept
# small because the Vertex registry appends the lineage JSON after it.
DESCRIPTION_LIMIT = 2048
# A test split smaller than this gives metrics too noisy to compare models on: the card says so.
SMALL_TEST_ROWS = 100

ARCHITECTURES = {
    "linear": "a linear model (Keras: logistic or linear regression on the encoded features)",
    "dnn": "a deep neural network (Keras: dense layers on the encoded features)",
    "gbt": "gradient-boosted decision trees (XGBoost)",
    "ensemble": "a weighted average of member models, weights fitted on the validation split",
}


def build_card(
    spec: Any,
    metadata: dict[str, Any],
    evaluation: dict[str, Any],
    *,
    identity: str | None,
    artifact_uri: str | None = None,
    pipeline_job: str = "",
) -> dict[str, Any]:
    """The model card (Model Card Toolkit field names) of one segment's model, from its artifact and evaluation.

    Args:
        spec: The fleet spec (name, task, label, owners from `registry.labels`, data source).
        metadata: The artifact's metadata (`read_metadata`).
        evaluation: The segment's row of `training_steps.evaluate_shard`.
        identity: The version's identity (sha256 hex), when known.
        artifact_uri: Where the artifact is registered from, when it is a URI.
        pipeline_job: The run that registered it.
    """
    segment, metric = evaluation["segment"], evaluation["metric"]
    architecture = metadata.get("architecture", "")
    rows = metadata.get("rows") or {}
    test_rows = int(evaluation.get("test_rows") or 0)
    # The trainer's record in the artifact (the evaluation carries the same one).
    selection = metadata.get("selection") or evaluation.get("selection")
    references = [f"fleet spec sha256 {metadata.get('spec_sha256')}", f"data source {spec.data.source}"]
    references += [f"pipeline job {pipeline_job}"] if pipeline_job else []
    references += [f"artifact {artifact_uri}"] if artifact_uri else []
    classes = metadata.get("classes") or []
    return json_safe(
        {
            "schema_version": SCHEMA_VERSION,
            "model_details": {
                "name": evaluation["model_id"],
                "overview": (
                    f"Predicts {spec.label} ({spec.task.value}) for segment {segment} of fleet {spec.name}, "
                    f"with {_architecture_name(architecture)}."
                ),
                "owners": _owners(spec.registry.labels),
                "version": {"name": identity or "", "diff": (evaluation.get("reason") or "")},
                "references": [{"reference": r} for r in references],
            },
            "model_parameters": {
                "model_architecture": _architecture_text(architecture, metadata),
                "architecture": architecture,
                "hyperparameters": metadata.get("hyperparameters"),
                "input_format_map": [
                    {"key": name, "value": kind}
                    for kind in ("numeric", "categorical")
                    for name in (metadata.get("features") or {}).get(kind, [])
                ],
                "output_format": (
                    f"{spec.task.value}: scores for classes {classes}" if classes else f"{spec.task.value}: a value"
                ),
                "data": [
                    {
                        "name": "training data",
                        "description": (
                            f"the train split of segment {segment} ({rows.get('validation', 0)} validation rows "
                            "chose the epochs and the architecture); sha256 of the segment's rows, from which the "
                            "spec's split draws every split"
                        ),
                        "link": spec.data.source,
                        "sha256": metadata.get("data_sha256"),
                        "rows": rows.get("train"),
                        "validation_rows": rows.get("validation"),
                    },
                    {
                        "name": "evaluation data",
                        "description": f"the test split of segment {segment}"
                        + (
                            ""
                            if evaluation.get("test_sha256")
                            else "; sha256 of the segment's rows (the evaluation records none of the test rows alone)"
                        ),
                        "link": spec.data.source,
                        # The test rows' own hash when the evaluation records one, else the segment's rows'.
                        "sha256": evaluation.get("test_sha256") or metadata.get("data_sha256"),
                        "rows": test_rows,
                    },
                ],
            },
            "quantitative_analysis": {
                "performance_metrics": _performance(evaluation),
                "fairness": evaluation.get("fairness"),
            },
            "considerations": {
                "users": [
                    {"description": f"applications of {owner['name']} that score segment {segment}"}
                    for owner in _owners(spec.registry.labels)
                ],
                "use_cases": [
                    {
                        "description": f"serving predictions of {spec.label} for rows of segment {segment} "
                        f"(features {', '.join(_feature_names(metadata))})"
                    }
                ],
                "limitations": [{"description": text} for text in _limitations(evaluation, test_rows, selection)],
                "tradeoffs": [],
                "ethical_considerations": _ethical(evaluation),
            },
            "fleetops": {
                "fleet": spec.name,
                "segment": segment,
                "identity_sha256": identity,
                "primary_metric": metric,
                "goal": evaluation.get("goal"),
                "champion": {
                    "promoted": bool(evaluation.get("promote")),
                    "reason": evaluation.get("reason"),
                    "champion_version": evaluation.get("champion_version"),
                    "champion_value": evaluation.get("champion_value"),
                },
                "selection": _selection(selection),
                "fallback": evaluation.get("fallback") or metadata.get("fallback"),
                "pipeline_job": pipeline_job,
            },
        }
    )


def card_markdown(card: dict[str, Any]) -> str:
    """The card for people: details, parameters, data, metrics (with slices), fairness, considerations, decision."""
    details, parameters = card["model_details"], card["model_parameters"]
    analysis, considerations, ours = card["quantitative_analysis"], card["considerations"], card["fleetops"]
    lines = [f"# Model card: {details['name']}", "", details["overview"], ""]
    lines += ["## Model details", ""]
    owners = ", ".join(f"{o['name']} ({o['contact']})" for o in details["owners"]) or "none given (registry.labels)"
    lines += [f"- owners: {owners}", f"- identity: {details['version']['name'] or 'none'}"]
    lines += [f"- {r['reference']}" for r in details["references"]]
    lines += ["", "## Model parameters", "", f"- architecture: {parameters['model_architecture']}"]
    features = ", ".join(f"{f['key']} ({f['value']})" for f in parameters["input_format_map"])
    lines += [f"- input features: {features}", f"- output: {parameters['output_format']}", ""]
    lines += ["| data | rows | sha256 | description |", "|---|---|---|---|"]
    lines += [f"| {d['name']} | {d['rows']} | {d['sha256']} | {d['description']} |" for d in parameters["data"]]
    lines += ["", "## Quantitative analysis", "", "| metric | slice | value |", "|---|---|---|"]
    lines += [f"| {m['type']} | {_slice(m)} | {_shown(m['value'])} |" for m in analysis["performance_metrics"]]
    lines += ["", "### Fairness", "", *_fairness(analysis.get("fairness"))]
    lines += ["", "## Champion decision", ""]
    champion = ours["champion"]
    lines.append(f"- {'promoted' if champion['promoted'] else 'not promoted'}: {champion['reason']}")
    selection = ours.get("selection")
    if selection:
        lines += ["", "## Architecture selection", ""]
        lines.append(f"Chose {selection['chosen']} on validation {selection['metric']}: {selection['reason']}")
        lines += ["", f"| candidate | validation {selection['metric']} | test {selection['metric']} |", "|---|---|---|"]
        for name, values in selection["candidates"].items():
            label = f"{name} ({values['architecture']})" if values.get("architecture") else name
            label += " **chosen**" if name == selection["chosen"] else ""
            lines.append(f"| {label} | {_shown(values.get('validation'))} | {_shown(values.get('test'))} |")
        lines += [f"- {name} failed: {why}" for name, why in sorted((selection.get("failed") or {}).items())]
    lines += ["", "## Considerations", ""]
    lines += [f"- intended use: {u['description']}" for u in considerations["use_cases"]]
    lines += [f"- users: {u['description']}" for u in considerations["users"]]
    lines += [f"- limitation: {x['description']}" for x in considerations["limitations"]]
    lines += [f"- {x['name']}: {x['mitigation_strategy']}" for x in considerations["ethical_considerations"]]
    return "\n".join(lines) + "\n"


def card_summary(card: dict[str, Any], limit: int = DESCRIPTION_LIMIT) -> str:
    """A short Markdown summary of the card for a Vertex version description, at most `limit` characters."""
    details, ours = card["model_details"], card["fleetops"]
    overall = [m for m in card["quantitative_analysis"]["performance_metrics"] if not m["slice"]]
    data = card["model_parameters"]["data"]
    lines = [
        f"Model card of {details['name']}: {details['overview']}",
        f"Test metrics: {', '.join(_metric_text(m) for m in overall) or 'none'}.",
        f"Champion: {'promoted' if ours['champion']['promoted'] else 'not promoted'}: {ours['champion']['reason']}.",
        *[f"{d['name']}: {d['rows']} rows, sha256 {d['sha256']}." for d in data],
        f"Full card: {CARD_MARKDOWN} and {CARD_JSON} in the artifact.",
    ]
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    tail = f"... (cut at {limit} characters; full card: {CARD_MARKDOWN} in the artifact)"
    return text[: limit - len(tail)] + tail


def _slice(metric: dict[str, Any]) -> str:
    if not metric["slice"]:
        return "overall"
    return f"{metric['slice']} ({metric['rows']} rows)" if metric.get("rows") is not None else metric["slice"]


def _metric_text(metric: dict[str, Any]) -> str:
    return f"{metric['type']} {_shown(metric['value'])}"


def card_bytes(card: dict[str, Any]) -> bytes:
    return (json.dumps(card, indent=2, sort_keys=True) + "\n").encode()


def card_sha256(card: dict[str, Any]) -> str:
    return hashlib.sha256(card_bytes(card)).hexdigest()


def write_card(artifact: str | Path, card: dict[str, Any]) -> None:
    """Write the card's JSON and Markdown into the artifact directory (replacing an earlier run's)."""
    root = Path(artifact)
    (root / CARD_JSON).write_bytes(card_bytes(card))
    # Rendered from the card as stored (sorted keys, JSON values), so the Markdown is what the JSON says.
    (root / CARD_MARKDOWN).write_text(card_markdown(json.loads(card_bytes(card))))


def place_card(artifact: str | Path, card: dict[str, Any], registered_here: Callable[[], bool]) -> dict[str, Any]:
    """Write `card` into the artifact unless that would change a registered version's bytes; the card it holds.

    An artifact folder that already holds a card of the same model (same identity) with other content,
    and is itself a registered version's artifact (`registered_here()`: on Vertex a version's
    `artifact_uri` is the run's folder, not a copy), keeps its card: rewriting it would change that
    version's bytes, which its `artifact-sha256` label guards, and the serving container would refuse
    them. That happens when a later run registers the same folder again (a cached train step); the
    version it finds is the one the kept card describes. Elsewhere (the twin copies artifacts into its
    store) the card is written.
    """
    existing = read_card(artifact)
    if existing is not None and existing[0] != card:
        same_model = existing[0].get("fleetops", {}).get("identity_sha256") == card["fleetops"]["identity_sha256"]
        if same_model and registered_here():
            return existing[0]
    write_card(artifact, card)
    return card


def remove_card(artifact: str | Path) -> None:
    """Take an earlier card out of the artifact (before hashing its bytes as they were saved)."""
    for name in CARD_FILES:
        (Path(artifact) / name).unlink(missing_ok=True)


def read_card(artifact: str | Path) -> tuple[dict[str, Any], str] | None:
    """The card (JSON, Markdown) stored in an artifact directory; None for a version registered without one."""
    root = Path(artifact)
    if not (root / CARD_JSON).is_file():
        return None
    markdown = root / CARD_MARKDOWN
    card = json.loads((root / CARD_JSON).read_text())
    return card, markdown.read_text() if markdown.is_file() else card_markdown(card)


# -- parts ---------------------------------------------------------------------------------------


def _owners(labels: dict[str, str]) -> list[dict[str, str]]:
    """Owners from the spec's registry labels: `owner`, `owners`, `team`, `contact` (Vertex labels, so slugs)."""
    keys = ("owner", "owners", "team", "contact")
    return [{"name": labels[k], "contact": f"registry label {k}"} for k in keys if labels.get(k)]


def _feature_names(metadata: dict[str, Any]) -> list[str]:
    features = metadata.get("features") or {}
    return [*features.get("numeric", []), *features.get("categorical", [])]


def _architecture_name(architecture: str) -> str:
    if architecture.startswith("global_"):
        inner = architecture.removeprefix("global_")
        return f"the fleet's global model ({ARCHITECTURES.get(inner, inner)}) trained on every segment"
    return ARCHITECTURES.get(architecture, architecture or "an unrecorded architecture")


def _architecture_text(architecture: str, metadata: dict[str, Any]) -> str:
    text = f"{architecture}: {_architecture_name(architecture)}"
    ensemble = metadata.get("ensemble") or {}
    members = ensemble.get("members") or []
    if members:
        weights = ", ".join(f"{m['name']} {m['weight']:.3g}" for m in members if m.get("weight") is not None)
        text += f"; members and weights: {weights or ', '.join(m['name'] for m in members)}"
    if ensemble.get("fixed_features"):
        fixed = ", ".join(f"{k}={v}" for k, v in sorted(ensemble["fixed_features"].items()))
        text += f"; features fixed for this segment: {fixed}"
    return text


def _performance(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Overall test metrics then each slice's, as the schema's `performance_metrics` (value: a string)."""
    from fleetops.evaluation.metrics import headline

    metrics = evaluation.get("metrics") or {}
    undefined = evaluation.get("undefined") or {}
    result = [{"type": k, "value": _value(v), "slice": ""} for k, v in sorted(headline(metrics).items())]
    result += [{"type": k, "value": "undefined", "slice": ""} for k in sorted(undefined)]
    for s in evaluation.get("slices") or []:
        where = f"{s['feature']}={s['value']}"
        result += [
            {"type": k, "value": _value(v), "slice": where, "rows": s.get("rows")}
            for k, v in sorted((s.get("metrics") or {}).items())
        ]
        result += [
            {"type": k, "value": "undefined", "slice": where, "rows": s.get("rows")}
            for k in sorted(s.get("undefined") or {})
        ]
    return result


def _limitations(evaluation: dict[str, Any], test_rows: int, selection: dict[str, Any] | None) -> list[str]:
    notes = []
    if test_rows < SMALL_TEST_ROWS:
        notes.append(
            f"small test split: {test_rows} row(s), fewer than {SMALL_TEST_ROWS}; its metrics are noisy "
            "and a champion decision on them is weak evidence"
        )
    notes += [f"{name} undefined: {why}" for name, why in sorted((evaluation.get("undefined") or {}).items())]
    for s in evaluation.get("slices") or []:
        notes += [f"slice {s['feature']}={s['value']}: {why}" for _, why in sorted((s.get("undefined") or {}).items())]
    fallback = evaluation.get("fallback")
    if fallback:
        notes.append(f"the fleet's global model stands in for this segment: {fallback.get('reason')}")
    failed = (selection or {}).get("failed") or {}
    notes += [f"candidate {name} failed to train: {why}" for name, why in sorted(failed.items())]
    return notes


def _ethical(evaluation: dict[str, Any]) -> list[dict[str, str]]:
    if evaluation.get("fairness"):
        return [
            {
                "name": "bias across sensitive slices",
                "mitigation_strategy": "measured in the evaluation (quantitative_analysis.fairness); "
                "the spec's evaluation.fairness gate decides the champion alias",
            }
        ]
    return [
        {
            "name": "bias across sensitive slices",
            "mitigation_strategy": "not measured: the evaluation has no fairness results for this model",
        }
    ]


def _selection(selection: dict[str, Any] | None) -> dict[str, Any] | None:
    if not selection:
        return None
    return {
        "metric": selection.get("metric"),
        "goal": selection.get("goal"),
        "chosen": selection.get("chosen"),
        "reason": selection.get("reason"),
        "candidates": {
            name: {k: values.get(k) for k in ("architecture", "validation", "test") if k in values}
            for name, values in (selection.get("candidates") or {}).items()
        },
        "failed": dict(selection.get("failed") or {}),
    }


def _fairness(report: Any) -> list[str]:
    """The evaluation's fairness tables as its report shows them; any other shape as a generic list."""
    from fleetops.evaluation.fairness import markdown_lines

    if isinstance(report, dict) and report.get("columns"):
        return markdown_lines(report, heading=False)
    return _generic(report)


def _generic(value: Any, depth: int = 0) -> list[str]:
    """Any JSON value as a Markdown list (the fairness results' shape is the evaluation's to choose)."""
    pad = "  " * depth
    if value is None or value == {} or value == []:
        return [f"{pad}- none in the evaluation"] if depth == 0 else [f"{pad}- none"]
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines += [f"{pad}- {key}:", *_generic(item, depth + 1)]
            else:
                lines.append(f"{pad}- {key}: {_shown(item)}")
        return lines
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict):
                flat = all(not isinstance(v, (dict, list)) for v in item.values())
                if flat:
                    lines.append(f"{pad}- " + ", ".join(f"{k} {_shown(v)}" for k, v in item.items()))
                else:
                    lines += [f"{pad}-", *_generic(item, depth + 1)]
            else:
                lines.append(f"{pad}- {_shown(item)}")
        return lines
    return [f"{pad}- {_shown(value)}"]


def _value(value: Any) -> str:
    """A metric value as the schema has it (a string); `repr` of the float, so it reads back exactly."""
    return repr(float(value)) if isinstance(value, (int, float)) and math.isfinite(value) else "undefined"


def _shown(value: Any) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "undefined"
    if isinstance(value, str):
        try:
            return f"{float(value):.4f}"
        except ValueError:
            return value
    return str(value)
