"""The one Vertex call layer (fleetops/platform/vertex/calls.py): pacing, retries, our errors, no duplicates.

Everything goes through the real google-cloud-aiplatform SDK against the loopback stand-in
(tests/fake_vertex.py), which refuses, enforces a write quota or loses answers on demand. Waits
go to a `FakeTime`, a clock that moves only when slept on: pacing and back-off cost no real time.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
from google.api_core import exceptions

from fleetops.errors import PlatformError, UserError
from fleetops.platform import vertex_settings
from fleetops.platform.vertex.calls import RetryPolicy, TokenBucket
from tests.fake_vertex import FakeTime, FakeVertex, Refusal, WriteQuota, connect_to

# Pacing adds no waits at this rate: the back-off's waits are the only ones.
UNPACED = "&writes_per_minute=600000&jobs_per_minute=600000"


@pytest.fixture
def fake():
    with FakeVertex() as server:
        yield server


def _upload(platform, model_id, artifact, **options):
    return platform.registry.upload_version(
        model_id, artifact, artifact_uri=f"gs://b/{model_id}", serving_image="img", **options
    )


def test_the_quota_settings_come_from_the_uri_and_bad_ones_are_refused():
    defaults = vertex_settings("vertex://proj-1/us-central1")
    assert (defaults.writes_per_minute, defaults.jobs_per_minute) == (600.0, 60.0)  # Vertex's published quotas
    lowered = vertex_settings("vertex://proj-1/us-central1?writes_per_minute=300&jobs_per_minute=7.5")
    assert (lowered.writes_per_minute, lowered.jobs_per_minute) == (300.0, 7.5)
    for bad in ("0", "-5", "many", "inf", "nan", ""):
        with pytest.raises(UserError, match=rf"writes_per_minute '{bad}' must be a positive number of requests per"):
            vertex_settings(f"vertex://proj-1/us-central1?writes_per_minute={bad}")
    with pytest.raises(UserError, match="jobs_per_minute '0' must be a positive number"):
        vertex_settings("vertex://proj-1/us-central1?jobs_per_minute=0")
    with pytest.raises(UserError, match="max_attempts 0 must be a whole number of at least 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(UserError, match="deadline_seconds -1 must be a positive number of seconds"):
        RetryPolicy(deadline_seconds=-1)


def test_a_token_bucket_hands_out_its_rate_to_threads_in_turn():
    clock = FakeTime()
    bucket = TokenBucket(60, capacity=2, clock=clock.clock)  # one a second, two saved up
    waits = [bucket.reserve() for _ in range(5)]
    assert waits == [0.0, 0.0, 1.0, 2.0, 3.0]  # the saved two at once, then reservations a second apart
    clock.sleep(10)  # idle: it fills up to its capacity, not beyond
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 1.0]

    shared = TokenBucket(600, capacity=1, clock=clock.clock)  # ten a second
    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda _: shared.reserve(), range(40)))
    # Each thread got its own slot: no two leave at once, none is skipped.
    assert sorted(round(w, 6) for w in waits) == [round(i / 10, 6) for i in range(40)]


def test_writes_and_job_submissions_are_paced_at_their_quotas(fake, artifact_dirs):
    vertex = connect_to(fake, "&writes_per_minute=120&jobs_per_minute=6")  # 2 writes a second, one job in 10 s
    for i, artifact in enumerate(artifact_dirs):
        _upload(vertex, f"m{i}", artifact)
    writes = vertex.time.sleeps
    # The bucket saves up a second's worth (two): the third write waits its half second.
    assert writes == [0.5]
    reads_before = len(writes)
    vertex.registry.list_versions("m0")
    vertex.registry.get_version("m1")
    assert len(vertex.time.sleeps) == reads_before  # reads are not paced

    for _ in range(2):
        vertex.batch_predict("m0", "1", "bq://proj-1.crm.churn", "bq://proj-1.scores")
    assert vertex.time.sleeps[reads_before:] == [10.0]
    assert len(fake.calls("POST", "batchPredictionJobs")) == 2


def test_a_429_a_few_times_then_success_just_succeeds(fake, artifact_dirs):
    vertex = connect_to(fake, UNPACED)
    fake.refusals.append(Refusal(429, count=3, method="POST", path_suffix="models:upload"))
    registration = _upload(vertex, "m", artifact_dirs[0])
    assert registration.created and registration.version.version_id == "1"
    assert len(fake.calls("POST", "models:upload")) == 4 and fake.answers[429] == 3
    # Full jitter: each wait is drawn between 0 and 1 s, 2 s, 4 s.
    assert len(vertex.time.sleeps) == 3
    assert all(0 <= wait <= cap for wait, cap in zip(vertex.time.sleeps, (1.0, 2.0, 4.0), strict=True))


@pytest.mark.parametrize(("status", "error"), [(503, "ServiceUnavailable"), (504, "GatewayTimeout")])
def test_503_and_deadline_exceeded_are_retried_and_end_as_our_error(fake, artifact_dirs, status, error):
    vertex = connect_to(fake, UNPACED, retry=RetryPolicy(max_attempts=4))
    fake.refusals.append(Refusal(status, count=1, method="GET", path_suffix=":listVersions"))
    fake.refusals.append(Refusal(status, count=1, method="POST", path_suffix="models:upload"))
    assert _upload(vertex, "m", artifact_dirs[0]).created  # one of each refused, then answered

    fake.refusals.append(Refusal(status, count=100, method="GET", path_suffix=":listVersions"))
    with pytest.raises(PlatformError) as failed:
        vertex.registry.list_versions("m")
    message = str(failed.value)
    assert "Vertex AI listing of the versions of model 'm' failed after 4 attempt(s)" in message
    assert f"last error: {error}: {status} GET" in message and f"injected {status} for GET" in message
    cause = exceptions.GatewayTimeout if status == 504 else exceptions.ServiceUnavailable
    assert isinstance(failed.value.__cause__, cause)


def test_other_client_errors_are_not_retried(fake, artifact_dirs):
    vertex = connect_to(fake, UNPACED)
    _upload(vertex, "m", artifact_dirs[0])
    for status, error in ((400, exceptions.BadRequest), (404, exceptions.NotFound), (409, exceptions.Conflict)):
        fake.refusals.append(Refusal(status, count=1, method="POST", path_suffix=":mergeVersionAliases"))
        sent = len(fake.calls("POST", ":mergeVersionAliases"))
        with pytest.raises(error):
            vertex.registry.add_version_aliases("m", "1", ["champion"])
        assert len(fake.calls("POST", ":mergeVersionAliases")) == sent + 1
    assert vertex.time.sleeps == []


def test_the_total_deadline_bounds_the_retries(fake, artifact_dirs):
    policy = RetryPolicy(max_attempts=100, deadline_seconds=20, initial_backoff=4, max_backoff=4, multiplier=1)
    vertex = connect_to(fake, UNPACED, retry=policy)
    fake.refusals.append(Refusal(429, count=1000, method="GET", path_suffix="/models"))
    with pytest.raises(PlatformError, match="listing of models in proj-1/us-central1 failed after"):
        vertex.registry.list_models()
    assert sum(vertex.time.sleeps) <= 20 and len(fake.calls("GET", "/models")) < 100


def test_a_server_error_that_is_not_transient_is_ours_at_once(fake, artifact_dirs):
    vertex = connect_to(fake, UNPACED)
    fake.refusals.append(Refusal(500, count=1, method="GET", path_suffix="/models"))
    with pytest.raises(PlatformError, match=r"failed after 1 attempt\(s\); last error: InternalServerError: 500"):
        vertex.registry.list_models()


def test_an_upload_created_before_its_answer_was_lost_is_not_uploaded_again(fake, artifact_dirs):
    vertex = connect_to(fake, UNPACED)
    # The first version creates the model; the second is a version of it: both lose their answer once.
    for status in (503, 504):
        fake.refusals.append(Refusal(status, count=1, after_handling=True, method="POST", path_suffix="models:upload"))
    first = _upload(vertex, "m", artifact_dirs[0])
    second = _upload(vertex, "m", artifact_dirs[1], is_default_version=False)
    assert first.created and second.created and (first.version.version_id, second.version.version_id) == ("1", "2")
    assert len(fake.calls("POST", "models:upload")) == 2  # neither sent twice
    assert [v.version_id for v in vertex.registry.list_versions("m")] == ["1", "2"]


def test_deletions_that_happened_before_their_answer_was_lost_end_well(fake, artifact_dirs):
    vertex = connect_to(fake, UNPACED)
    _upload(vertex, "m", artifact_dirs[0])
    _upload(vertex, "m", artifact_dirs[1], is_default_version=False)
    vertex.endpoints.create("gone")
    fake.refusals.append(Refusal(503, count=2, after_handling=True, method="DELETE"))
    vertex.registry.delete_version("m", "2")  # deleted, then a 503: a retry would be answered 404
    vertex.endpoints.delete("gone")
    assert [v.version_id for v in vertex.registry.list_versions("m")] == ["1"] and fake.endpoints == {}
    assert len(fake.calls("DELETE")) == 2


def test_registering_a_fleet_against_refusals_registers_each_version_once(fake, tmp_path):
    """A share of every call refused with 429 and a share of uploads losing their answer (503 after creating)."""
    # An upload attempt is two requests (the upload, the read of the result): about 3 in 10 attempts
    # fail, so 16 attempts leave ~1e-8 per upload to chance. The threads share one FakeTime, whose
    # clock each thread's waits move: the deadline is out of the way.
    vertex = connect_to(fake, UNPACED, retry=RetryPolicy(max_attempts=16, deadline_seconds=1e6))
    fake.refusals += [
        Refusal(429, share=0.15, seed=7),
        Refusal(503, share=0.05, seed=8, after_handling=True, method="POST", path_suffix="models:upload"),
    ]
    models, versions = 60, 3
    artifacts = []
    for v in range(versions):
        artifact = tmp_path / f"artifact{v}"
        artifact.mkdir()
        (artifact / "model.bin").write_bytes(bytes([v]) * 10)
        artifacts.append(artifact)

    def register(i):
        for v, artifact in enumerate(artifacts):  # a model's versions in order, the models in parallel
            identity = f"{i:032x}{v:032x}"
            _upload(vertex, f"m{i}", artifact, identity=identity, is_default_version=v == 0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, range(models)))
    counts = fake.versions_by_identity()
    assert len(counts) == models * versions and set(counts.values()) == {1}  # all registered, none twice
    # The refusals did happen (about 150 and 10; which calls get them depends on the threads' order).
    assert fake.answers[429] > 50 and fake.answers[503] > 0
    assert len(fake.calls("POST", "models:upload")) > models * versions  # retries were sent, and found theirs


def test_pacing_keeps_a_fleet_under_the_quota_that_unpaced_calls_run_into(fake, artifact_dirs):
    """The stand-in admits 6 writes in 6 s; both clocks are one FakeTime, so no real time passes."""
    clock = FakeTime()
    fake.write_quota = WriteQuota(limit=6, window_seconds=6, clock=clock.clock)
    paced = connect_to(fake, "&writes_per_minute=60", clock=clock)  # one a second: the quota's rate
    for i in range(20):
        _upload(paced, f"paced-{i}", artifact_dirs[0])
    assert fake.answers[429] == 0
    assert clock.now == 19.0  # one write a second: the quota's own lower bound, not a wait more

    unpaced = connect_to(fake, UNPACED, clock=clock)
    for i in range(20):
        _upload(unpaced, f"unpaced-{i}", artifact_dirs[0])
    assert fake.answers[429] > 5  # each window's seventh write onwards, until a back-off reaches the next window
    counts = fake.versions_by_identity()
    assert len(counts) == 40 and set(counts.values()) == {1}


def test_a_platform_connected_later_inherits_nothing_from_one_before():
    """aiplatform.init keeps what it was given before: a second platform must not send the first one's key."""
    from google.cloud.aiplatform import initializer

    from fleetops.platform import connect

    key = "projects/proj-1/locations/us-central1/keyRings/r/cryptoKeys/k"
    connect(
        f"vertex://proj-1/us-central1?encryption_key={key}&network=projects/1/global/networks/n&credentials=anonymous"
    )
    assert initializer.global_config.encryption_spec_key_name == key
    connect("vertex://proj-2/europe-west4?credentials=anonymous")
    config = initializer.global_config
    assert (config.project, config.location) == ("proj-2", "europe-west4")
    assert config.encryption_spec_key_name is None and config.network is None
