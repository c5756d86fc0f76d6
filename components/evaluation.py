"""Evaluation component: test metrics of a shard's models against their champions."""

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import fleetops_component


@fleetops_component
def evaluate(
    fleet_spec: str,
    platform: str,
    dataset: Input[Dataset],
    model: Input[Model],
    shard: dict,
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    evaluation: Output[Artifact],
    report: Output[Markdown],
):
    """Evaluate each new model and the current champion on the same test rows.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        platform: Platform URI: `local:///path` or `vertex://PROJECT/REGION`.
        dataset: The split dataset.
        model: The shard's trained models.
        shard: {"shard": i, "segments": [...]}.
        metrics: Output. Scalar test metrics per segment (`<segment>/<metric>`).
        classification_metrics: Output. ROC curve and confusion matrix (the shard's first segment).
        evaluation: Output. Full Vertex-shaped metrics, slices and the champion comparison (JSON).
        report: Output. The same for people: metrics, the champion decision, slices, tuning trials.
    """
    import json

    from fleetops import training_steps
    from fleetops.evaluation.report import evaluation_report
    from fleetops.platform import connect
    from fleetops.spec import parse_spec
    from fleetops.training.segments import read_outcome

    # What the train step produced: its trained segments and those given the global model (not the failed).
    trained = read_outcome(model.path)
    results = training_steps.evaluate_shard(
        parse_spec(fleet_spec),
        connect(platform),
        dataset.path,
        model.path,
        [m["segment"] for m in trained["models"]],
        fallback=trained["fallback"],
    )
    with open(evaluation.path, "w") as handle:
        json.dump(results, handle)
    with open(report.path, "w") as handle:
        handle.write(evaluation_report(results))
    for result in results:
        for name, value in result["metrics"].items():
            if isinstance(value, (int, float)):
                metrics.log_metric(f"{result['segment']}/{name}", value)
        metrics.log_metric(f"{result['segment']}/promote", float(result["promote"]))
    if not results:
        return
    first = results[0]
    if first["roc"] and first["roc"]["fpr"]:
        roc = first["roc"]
        classification_metrics.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    if "confusionMatrix" in first["metrics"]:
        matrix = first["metrics"]["confusionMatrix"]
        names = [spec["displayName"] for spec in matrix["annotationSpecs"]]
        classification_metrics.log_confusion_matrix(names, matrix["rows"])
    classification_metrics.metadata["segment"] = first["segment"]
