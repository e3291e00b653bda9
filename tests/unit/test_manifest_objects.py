"""core.manifest_objects: documents, lines and helm sources of manifest text, and what admission judges."""

from __future__ import annotations

from archaudit.core import manifest_objects as mo
from archaudit.core import workloads
from archaudit.webhook import WORKLOAD_RESOURCES

HELM = """\
---
# Source: tiny/templates/service.yaml
apiVersion: v1
kind: Service
metadata:
  name: web
---
# Source: tiny/templates/pod.yaml
apiVersion: v1
kind: Pod
metadata:
  name: probe
spec:
  containers:
    - {name: c, image: busybox}
"""


def test_admitted_kinds_are_the_webhooks() -> None:
    kinds = {"deployments": "Deployment", "statefulsets": "StatefulSet", "daemonsets": "DaemonSet"}
    kinds |= {"replicasets": "ReplicaSet", "jobs": "Job", "cronjobs": "CronJob"}
    kinds |= {"replicationcontrollers": "ReplicationController"}
    assert set(mo.ADMITTED_KINDS) == {"Pod", *(kinds[r] for _g, _v, r in WORKLOAD_RESOURCES)}
    assert set(mo.ADMITTED_KINDS) <= set(workloads.WORKLOAD_KINDS)


def test_helm_output_keeps_sources_and_first_lines() -> None:
    docs = mo.load_documents(HELM)
    assert [(d.obj["kind"], d.line, d.helm_source) for d in docs if isinstance(d, mo.Document)] == [
        ("Service", 3, "tiny/templates/service.yaml"),
        ("Pod", 9, "tiny/templates/pod.yaml"),
    ]


def test_empty_documents_are_dropped_and_plain_yaml_has_no_source() -> None:
    docs = mo.load_documents("---\n---\n# only a comment\n---\nkind: Pod\n...\n")
    assert docs == [mo.Document({"kind": "Pod"}, 5, None)]


def test_a_malformed_document_names_its_line_and_the_others_survive() -> None:
    text = "kind: Pod\nmetadata: {name: a}\n---\nkind: Pod\nmetadata:\n  name: [unclosed\n---\nkind: Job\n"
    docs = mo.load_documents(text)
    assert isinstance(docs[0], mo.Document)
    assert isinstance(docs[1], mo.DocumentError)
    assert docs[1].line == 6  # the parser notices at the chunk's end; the last line of the document
    assert isinstance(docs[2], mo.Document)
    assert docs[2].obj == {"kind": "Job"}
    assert docs[2].line == 8


def test_a_scalar_document_is_an_error() -> None:
    (doc,) = mo.load_documents("just text\n")
    assert isinstance(doc, mo.DocumentError)
    assert "mapping" in doc.message


def test_json_errors_carry_the_json_line() -> None:
    (doc,) = mo.load_documents('{\n  "kind": "Pod",\n  oops\n}\n', as_json=True)
    assert isinstance(doc, mo.DocumentError)
    assert doc.line == 3


def test_lists_are_flattened_nested_and_typed() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "p"}}
    nested = {"kind": "List", "items": [pod, {"kind": "PodList", "items": [pod, "junk"]}]}
    assert list(mo.objects_of(nested)) == [pod, pod]
    assert list(mo.objects_of(pod)) == [pod]


def test_list_items_have_their_own_lines() -> None:
    text = "# a list\nkind: List\nitems:\n  - kind: Pod\n    metadata: {name: a}\n  - 7\n  - kind: Job\n"
    (doc,) = mo.load_documents(text)
    assert isinstance(doc, mo.Document)
    assert doc.item_lines == (4, 6, 7)
    assert [(o["kind"], line) for o, line in mo.placed_objects(doc)] == [("Pod", 4), ("Job", 7)]
    (single,) = mo.load_documents("kind: Pod\n")
    assert isinstance(single, mo.Document)
    assert list(mo.placed_objects(single)) == [({"kind": "Pod"}, 1)]


def test_namespace_labels_come_from_namespace_objects_only() -> None:
    objs = [
        {"kind": "Namespace", "metadata": {"name": "a", "labels": {"archaudit.io/mode": "warn"}}},
        {"kind": "Namespace", "metadata": {"name": "b"}},
        {"kind": "Pod", "metadata": {"name": "c", "labels": {"archaudit.io/mode": "off"}}},
    ]
    assert mo.namespace_labels(objs) == {"a": {"archaudit.io/mode": "warn"}, "b": {}}


def test_target_of_reads_the_object_as_the_webhook_does() -> None:
    ds = {
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "template": {
                "spec": {
                    "initContainers": [{"name": "i", "image": "a"}],
                    "containers": [{"name": "c", "image": "b"}, {"name": "noimage"}],
                }
            }
        },
    }
    target = mo.target_of(ds, default_namespace="default")
    assert target is not None
    assert (target.kind, target.namespace, target.name, target.is_pod) == (
        "DaemonSet",
        "default",
        "agent",
        False,
    )
    assert target.images == (("containers", "c", "b"), ("initContainers", "i", "a"))
    assert target.scheduling_spec == workloads.scheduling_spec_of(ds)
    assert target.scheduling_spec != target.pod_spec  # the controller's tolerations are added
    assert not target.controlled


def test_target_of_ignores_other_kinds_and_marks_controlled_objects() -> None:
    assert mo.target_of({"kind": "PodTemplate", "template": {"spec": {}}}, default_namespace="x") is None
    assert mo.target_of({"kind": "Service"}, default_namespace="x") is None
    owned = {
        "kind": "ReplicaSet",
        "metadata": {
            "namespace": "ns",
            "ownerReferences": [{"kind": "Deployment", "name": "d", "controller": True}],
        },
    }
    target = mo.target_of(owned, default_namespace="x")
    assert target is not None
    assert target.controlled
    assert target.namespace == "ns"
    assert target.images == ()
