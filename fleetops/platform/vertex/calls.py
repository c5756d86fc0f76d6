"""Every call fleetops makes to Vertex AI goes through `VertexCalls`: paced, retried, its errors made ours.

Pacing. Vertex's request quotas are per project and region
(https://cloud.google.com/vertex-ai/docs/quotas#request_quotas): "Resource management (CRUD)
requests" 600 a minute and "Job or long-running operation (LRO) submission requests" 60 a minute.
A fleet of 1,000 registering or deploying at once would spend the first in a second and be
answered 429 for the rest of the minute, so each quota class has a token bucket here
(`writes_per_minute`, `jobs_per_minute` in the platform URI) that a call takes a token from
before it is sent. A bucket saves up at most a second's worth of tokens (at least one), so calls
leave at the quota's rate rather than in bursts: a minute sees at most its quota and a second's
worth more (1/60 of it), and only after an idle spell. Writes (uploads, alias changes, endpoint,
pool and deploy changes, deletions) take from the writes bucket, job creations (batch
prediction, monitoring jobs) from the jobs bucket. Reads are not paced (they are retried like
the rest): the published table counts them as CRUD requests too, so a project near its quota
should lower `writes_per_minute` to leave room for them. The buckets belong to one
`VertexCalls`, shared by the registry and the endpoints of a platform and by the threads that
use it (a lock); another process has its own.

Retrying. A call refused with 429 (TooManyRequests / ResourceExhausted), 503
(ServiceUnavailable) or 504 (GatewayTimeout; DeadlineExceeded is one, and REST maps a 504 to
GatewayTimeout) is tried again after a back-off with full jitter (a uniform wait between 0 and
`initial * multiplier**n`, capped), at most `max_attempts` times and within `deadline_seconds`.
Other client errors (400, 404, 409, ...) are not retried and reach the caller as they are: a
404 or a 409 is an answer callers act on (a missing model, a pool created meanwhile). Other
server errors, and transient ones still failing when the attempts or the deadline run out,
become our `PlatformError`, naming what was called and the last error.

Why not `google.api_core.retry.Retry`: its `retry_target` sleeps with `time.sleep` and reads
`time.monotonic` directly (neither can be injected, so tests would wait or patch time), it has
no bound on attempts (only a timeout; api-core issue 535), and it has no place to ask "did the
refused create happen after all?" between attempts, which a create needs so that a retry does not
add a second version. Its back-off is what we want, so `exponential_sleep_generator` (full
jitter: `random.uniform(0, delay)`) is used as it is.

Idempotence. A create passes `already_done`: before each retry it looks the resource up by what
fleetops already marks it with (a version's identity label, the deployed models of an endpoint,
an endpoint's id) and returns it when the refused attempt took effect server-side (Vertex can
create, then answer 503 or time out).

The API endpoint. The SDK's resource classes (`aiplatform.Model`, `Endpoint`,
`DeploymentResourcePool`, `ModelDeploymentMonitoringJob`, ...) take `project`, `location` and
`credentials` per call, and callers pass them, but not an API endpoint or a transport: those
come only from `aiplatform.init`'s global config (`initializer.global_config.create_client`
builds each client's `client_options` from it). `VertexPlatform` therefore still sets them
there; two platforms with different `api_endpoint`s in one process would share the last one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fleetops.errors import PlatformError, UserError
from fleetops.platform import VertexSettings

T = TypeVar("T")

WRITES = "writes"
JOBS = "jobs"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call refused for a transient reason is tried again."""

    max_attempts: int = 8
    deadline_seconds: float = 600.0
    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise UserError(f"max_attempts {self.max_attempts!r} must be a whole number of at least 1")
        for name in ("deadline_seconds", "initial_backoff", "max_backoff"):
            value = getattr(self, name)
            if not value > 0:
                raise UserError(f"{name} {value!r} must be a positive number of seconds")
        if not self.multiplier >= 1:
            raise UserError(f"multiplier {self.multiplier!r} must be at least 1")


class TokenBucket:
    """`per_minute` tokens a minute, at most `capacity` saved up; `reserve` takes one and says how long to wait.

    A token not yet there is reserved (the count goes below zero), so threads waiting together
    leave one after another at the rate, in the order they came, and nobody holds the lock
    while waiting.
    """

    def __init__(self, per_minute: float, *, capacity: float = 1.0, clock: Callable[[], float] = time.monotonic):
        if not per_minute > 0:
            raise UserError(f"a token bucket's rate {per_minute!r} must be a positive number per minute")
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.clock = clock
        self._tokens = capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; the seconds to wait before using it (0 when one was there)."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0
            return max(0.0, -self._tokens / self.rate)


class VertexCalls:
    """The one way fleetops calls Vertex: `read`, `write` and `submit` pace, retry and translate errors."""

    def __init__(
        self,
        settings: VertexSettings,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.sleep = sleep  # the waits, pacing's and back-off's (tests pass a recorder)
        self.buckets = {
            quota: TokenBucket(per_minute, capacity=max(1.0, per_minute / 60), clock=clock)
            for quota, per_minute in ((WRITES, settings.writes_per_minute), (JOBS, settings.jobs_per_minute))
        }

    def read(self, what: str, call: Callable[[], T]) -> T:
        """A read: retried, not paced."""
        return self._call(what, call, None, None)

    def write(self, what: str, call: Callable[[], T], *, already_done: Callable[[], T | None] | None = None) -> T:
        """A resource write, paced by `writes_per_minute`; `already_done` finds a refused write that happened."""
        return self._call(what, call, WRITES, already_done)

    def submit(self, what: str, call: Callable[[], T], *, already_done: Callable[[], T | None] | None = None) -> T:
        """A job submission, paced by `jobs_per_minute`."""
        return self._call(what, call, JOBS, already_done)

    def _call(
        self, what: str, call: Callable[[], T], quota: str | None, already_done: Callable[[], T | None] | None
    ) -> T:
        from google.api_core import exceptions
        from google.api_core.retry import exponential_sleep_generator

        policy = self.retry
        started = self.clock()
        backoffs = exponential_sleep_generator(policy.initial_backoff, policy.max_backoff, policy.multiplier)
        for attempt in range(1, policy.max_attempts + 1):
            if attempt > 1 and already_done is not None and (done := already_done()) is not None:
                return done
            if quota is not None:
                self._wait(self.buckets[quota].reserve())
            try:
                return call()
            except exceptions.GoogleAPICallError as error:
                if not is_transient(error):
                    if isinstance(error, exceptions.ServerError):  # a 500 or 501: the platform's fault, not retried
                        raise _platform_error(what, error, attempt) from error
                    raise
                delay = next(backoffs)
                if attempt == policy.max_attempts or self.clock() - started + delay > policy.deadline_seconds:
                    raise _platform_error(what, error, attempt) from error
                self._wait(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.sleep(seconds)


def is_transient(error: Exception) -> bool:
    """429, 503 and 504 (deadline exceeded): worth another attempt after a wait."""
    from google.api_core import exceptions

    return isinstance(error, (exceptions.TooManyRequests, exceptions.ServiceUnavailable, exceptions.GatewayTimeout))


def _platform_error(what: str, error: Exception, attempts: int) -> PlatformError:
    return PlatformError(
        f"Vertex AI {what} failed after {attempts} attempt(s); last error: {type(error).__name__}: {error}"
    )
