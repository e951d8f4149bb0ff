"""/v1/jobs: ingest job state, progress and errors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import KbServiceDep
from app.api.schemas.ingest import JobList, JobOut

router = APIRouter(tags=["jobs"])


@router.get("/jobs", response_model=JobList)
def list_jobs(
    service: KbServiceDep,
    kb: Annotated[str | None, Query(description="Only this knowledge base's jobs.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Newest first, at most.")] = 100,
) -> JobList:
    return JobList(data=[JobOut.of(j) for j in service.list_jobs(kb, limit)])


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, service: KbServiceDep) -> JobOut:
    return JobOut.of(service.get_job(job_id))
