"""The pure core: what an image provides, where a pod may run, and the verdict. No I/O whatsoever.

    reference    image references (distribution grammar, containerd normalization)
    platforms    os/architecture/variant and the runtimes' rules for which image a node runs
    manifests    manifest lists, OCI indexes, manifests and configs -> the platforms an image provides
    scheduling   which nodes a pod (or a pod template) may use
    policy       the one decision engine: verdict, per-image facts, message, fix
    workloads    where the pod spec sits in each workload kind
    reports      the ImageAudit status: tallies, runtime evidence, bounds
    credentials  pull credentials matched to images as the kubelet matches them
    cloud        which registries ECR / Artifact Registry / ACR identity serves; token lifetimes
    mirrors      k3s registries.yaml: endpoints, rewrites, TLS and auth per registry
    auth         WWW-Authenticate challenges and bearer token flows
    config       settings, from flags, environment and the chart's values
    errors       the error tree

Nothing here opens a socket, a file or a subprocess, and nothing imports kopf, aiohttp or the
Kubernetes client (tests/unit/test_properties.py and import-linter hold it to that).
"""
