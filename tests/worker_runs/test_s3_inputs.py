"""A job whose blobs are in a bucket reads them through the worker's cache and stores its
artifacts in the bucket, with nothing in the data folder's blobs/."""

from __future__ import annotations

from support.s3 import MotoS3
from support.worker import WorkerData

from service.db.models import Checkpoint
from service.db.session import session_scope
from service.maintenance import sweep
from worker.execution import run_job


def test_a_match_job_reads_its_models_through_the_cache_and_stores_its_artifact_in_the_bucket(
    worker_data_on_s3: WorkerData, moto: MotoS3
) -> None:
    settings = worker_data_on_s3.settings
    job_id = worker_data_on_s3.submit("match")
    run_job(job_id)

    job = worker_data_on_s3.job(job_id)
    assert job.status == "succeeded", job.error
    with session_scope() as session:
        inputs = [
            session.get(Checkpoint, checkpoint_id)
            for checkpoint_id in (worker_data_on_s3.model_a, worker_data_on_s3.model_b)
        ]
        input_blobs = {checkpoint.blob_sha256 for checkpoint in inputs if checkpoint}
        artifacts = session.query(Checkpoint).filter(Checkpoint.source_job_id == job_id).all()
        artifact_blobs = {checkpoint.blob_sha256 for checkpoint in artifacts}
    assert len(input_blobs) == 2 and artifact_blobs

    keys = moto.keys("jobs/blobs/")
    assert keys == sorted(f"jobs/blobs/{sha[:2]}/{sha}" for sha in input_blobs | artifact_blobs)
    cached = sorted(path.name for path in settings.resolved_cache_dir.iterdir())
    assert cached == sorted(input_blobs)
    assert not settings.blob_dir.exists() or not any(settings.blob_dir.rglob("*"))
    assert list(settings.staging_dir.iterdir()) == []


def test_the_maintenance_sweep_aborts_an_unfinished_upload_and_survives_a_missing_bucket(
    worker_data_on_s3: WorkerData, moto: MotoS3
) -> None:
    key = f"jobs/blobs/ab/{'ab' * 32}"
    moto.client.create_multipart_upload(Bucket=moto.bucket, Key=key)
    # moto dates every upload in 2010: this one is long past LLFC_INCOMING_MAX_AGE_SECONDS.
    assert sweep(worker_data_on_s3.settings).removed_files == 1
    assert moto.unfinished_uploads("jobs/") == []

    elsewhere = worker_data_on_s3.settings.model_copy(update={"blob_url": "s3://absent/jobs"})
    assert sweep(elsewhere).removed_files == 0
