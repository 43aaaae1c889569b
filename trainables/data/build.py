"""Preprocessing a cohort's subjects as Ray tasks, one task per subject, over every CPU of the cluster.

When Ray is initialised (a study, the bench), each subject is a Ray task asking for one CPU: it reads its
own subject (from this node's disk, or downloads it from S3 when the build is given a ``fetch``), runs
``subject_slices`` and returns the slices through Ray's object store; the caller (``trainables.data.cache``)
writes them into the memory-mapped layout. When Ray is not initialised (unit tests, command lines), the
subjects are preprocessed here, in this process, one after another: nothing is started.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from trainables.data.layouts import SubjectRecord
from trainables.data.preprocess import PreprocessConfig, SubjectSlices, subject_slices

IN_FLIGHT_PER_CPU = 2  # tasks queued per cluster CPU: keeps CPUs busy while the driver bounds its memory


class SubjectFetch(Protocol):
    """Makes one subject's files local (picklable: it travels to the task): a record whose paths are on disk."""

    def __call__(self, record: SubjectRecord, workdir: Path) -> SubjectRecord: ...

    def source(self, path: Path) -> str:
        """Where ``path`` of a record comes from, for meta.json (an s3:// URI)."""
        ...


def preprocess_one(record: SubjectRecord, pre: PreprocessConfig, fetch: SubjectFetch | None = None) -> SubjectSlices:
    """One subject's slices; with ``fetch``, its files are downloaded into a temporary folder first (then removed)."""
    if fetch is None:
        return subject_slices(record, pre)
    workdir = Path(tempfile.mkdtemp(prefix="subject-"))
    try:
        return subject_slices(fetch(record, workdir), pre)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def preprocess_subjects(
    records: list[SubjectRecord],
    pre: PreprocessConfig,
    fetch: SubjectFetch | None = None,
    say: Callable[[str], None] | None = None,
) -> Iterator[tuple[int, SubjectSlices]]:
    """Yield ``(position in records, slices)`` for every subject, in the order they finish.

    With Ray initialised: Ray tasks of one CPU each, at most ``IN_FLIGHT_PER_CPU`` per cluster CPU queued at a
    time (the driver holds only the finished ones it has not written yet). Without Ray: in this process, in
    order. A task's error (a DataError naming the file) is raised here.
    """
    import ray  # a Ray dependency of the project; importing it does not start anything

    say = say or (lambda message: None)
    if not ray.is_initialized():
        for position, record in enumerate(records):
            yield position, preprocess_one(record, pre, fetch)
        return
    task = ray.remote(num_cpus=1, max_retries=0)(preprocess_one)
    limit = max(1, int(ray.cluster_resources().get("CPU", 1)) * IN_FLIGHT_PER_CPU)
    say(f"preprocessing {len(records)} subjects as Ray tasks over {int(ray.cluster_resources().get('CPU', 1))} CPUs")
    pending: dict = {}
    queue = iter(enumerate(records))
    for position, record in queue:
        pending[task.remote(record, pre, fetch)] = position
        if len(pending) >= limit:
            break
    while pending:
        [done], _ = ray.wait(list(pending), num_returns=1)
        position = pending.pop(done)
        yield position, ray.get(done)
        for position_next, record in queue:
            pending[task.remote(record, pre, fetch)] = position_next
            break
