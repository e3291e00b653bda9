"""The Kubernetes payloads archaudit reads and writes, as TypedDicts (as kopf types its own).

Only the fields archaudit touches are declared; the apiserver sends more, and they pass through. The
ImageAudit status shape is the CRD's schema (charts/archaudit/templates/crd.yaml): a change here is a
change there.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

__all__ = [
    "AdmissionRequest",
    "AdmissionResponse",
    "AdmissionReview",
    "AdmissionStatus",
    "Condition",
    "ContainerReport",
    "ImageAuditStatus",
    "PlatformCheck",
]


class AdmissionRequest(TypedDict):
    uid: str
    kind: NotRequired[dict[str, str]]
    resource: dict[str, str]  # group, version, resource
    subResource: NotRequired[str]
    operation: str  # CREATE | UPDATE | DELETE | CONNECT
    namespace: NotRequired[str]
    userInfo: dict[str, Any]
    object: NotRequired[dict[str, Any] | None]
    oldObject: NotRequired[dict[str, Any] | None]
    dryRun: NotRequired[bool]


class AdmissionStatus(TypedDict):
    code: int
    reason: str
    message: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    warnings: NotRequired[list[str]]
    status: NotRequired[AdmissionStatus]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: str  # "AdmissionReview"
    request: NotRequired[AdmissionRequest]
    response: NotRequired[AdmissionResponse]


class PlatformCheck(TypedDict):
    platform: str
    fit: str  # runs | at-risk | no | unknown
    pods: int


class ContainerReport(TypedDict):
    name: str
    image: str
    digest: str
    provides: list[str]
    nodePlatforms: list[str]
    checks: list[PlatformCheck]
    verdict: str
    reason: str
    message: str
    runtimeMismatch: bool
    runsOn: NotRequired[list[str]]  # target platforms this image runs on
    fixes: NotRequired[dict[str, str]]  # platform it lacks -> newer tag of its repository that provides it


class Requests(TypedDict):
    cpu: int  # millicores
    memory: int  # bytes


class Condition(TypedDict):
    type: str
    status: str  # "True" | "False"
    reason: str
    message: str
    lastTransitionTime: str


class ImageAuditStatus(TypedDict):
    workload: str
    verdict: str
    message: str
    images: int
    incompatible: int
    pods: int
    incompatiblePods: int
    nodePlatforms: str
    containers: list[ContainerReport]
    containersOmitted: int
    runsOn: NotRequired[list[str]]  # target platforms on which every image of the workload runs
    replicas: NotRequired[int]  # pods the workload runs at once
    requests: NotRequired[Requests]  # of one pod, as the scheduler counts them
    announced: NotRequired[str]
    conditions: NotRequired[list[Condition]]
    fingerprint: NotRequired[str]
    lastChecked: NotRequired[str]
