"""The `fleetops` distribution: the library, its KFP components and pipelines, and the `fleetops` command.

Every dependency is pinned to versions checked to install together on Python 3.11
(`pip check` clean); the comment beside each says why it is here.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # KFP v2 SDK: components, pipelines, the compiler and kfp.local runs.
    "kfp==2.17.3",
    # Vertex AI: model registry, pipeline jobs, evaluations (the `vertex://` platform).
    "google-cloud-aiplatform==2.7.0",
    # BigQuery: SQL and `bq://` data sources on the `vertex://` platform.
    "google-cloud-bigquery==3.47.0",
    # BigQuery's DataFrame conversion needs its pandas dtypes.
    "db-dtypes==1.9.0",
    # Training and serving: Keras models with preprocessing inside the model.
    "tensorflow-cpu==2.21.0",
    # The light serving runtime: LiteRT's interpreter runs each model's TFLite flatbuffer (~0.15 ms and
    # ~28 KB a loaded model, against hundreds of ms and MBs for Keras). TensorFlow's converter writes them.
    "ai-edge-litert==2.3.0",
    # Gradient-boosted trees (architecture gbt): native categories and missing values, early stopping,
    # exact TreeSHAP. Chosen over YDF by measurement on the sample fleet (README, "Architectures"): better
    # test auRoc, 3x faster single-instance scoring, a 5.6 MB wheel; the CPU-only build (no NCCL).
    "xgboost-cpu==3.2.0",
    # Tabular data in memory.
    "pandas==3.1.1",
    # Parquet files: datasets passed between pipeline steps. CSV parsing that reports each malformed line.
    "pyarrow==26.0.1",
    # SQL data sources and the `bq://` tables of the local twin.
    "duckdb==2.0.0",
    # Evaluation metrics (ROC/PR areas, log loss) from a library made for it.
    "scikit-learn==1.9.1",
    # The fleet spec: typed, validated configuration with every error listed.
    "pydantic==2.13.4",
    # Fleet specs are YAML.
    "PyYAML==6.0.3",
    # The prediction server: an ASGI server with the C HTTP parser and event loop it is fastest with.
    "uvicorn==0.54.0",
    "httptools==0.9.0",
    "uvloop==0.23.0",
    # Fast JSON for prediction requests and responses.
    "orjson==3.13.0",
    # The prediction server's /metrics (per-model requests, errors, latency; model cache) in Prometheus' format.
    "prometheus-client==0.26.0",
    # Local hyperparameter tuning: TPE, random and grid samplers, studies kept in SQLite (resumable).
    "optuna==5.0.0",
    # How a trainer reports its metric to a Vertex hyperparameter tuning trial.
    "cloudml-hypertune==0.1.0.dev6",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest==9.0.3",
        # Notebooks in notebooks/ are executed by the tests.
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
        # The tuning notebook plots its trials.
        "matplotlib==3.11.2",
        # The fleet scorecard's page is checked in headless Chromium (tests/test_scorecard.py). Playwright drives
        # Debian's chromium (`make install-test` installs it); it never downloads its own browsers.
        "playwright==1.65.2",
        # The fairness metrics (computed from counts with numpy, see fleetops/evaluation/fairness.py) are
        # checked against fairlearn's MetricFrame on the same rows; 0.15.0 installs with the pins above.
        "fairlearn==0.15.0",
    ],
    "dev": [
        "ruff==0.17.5",
    ],
    # Baselines the serving benchmark compares against (not used by fleetops itself).
    "bench": [
        "fastapi==0.163.2",
        # The end-to-end fleet benchmark sums the memory of a run's task processes.
        "psutil==7.2.2",
    ],
}

setup(
    name="fleetops",
    version="0.1.0",
    description="Kubeflow Pipelines components and pipelines for MLOps on Vertex AI, for fleets of models.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["fleetops", "fleetops.*", "components", "pipelines", "fleetops_cli"]),
    package_data={"fleetops": ["py.typed", "prices/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["fleetops=fleetops_cli.cli:main"]},
)
