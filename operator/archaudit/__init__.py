"""archaudit: admission webhook, auditor and CLI for container images on mixed-architecture clusters.

Layers (enforced by import-linter, see pyproject.toml):
  core      reference, platforms, manifests, scheduling, policy, workloads, reports, errors
            pure functions and data, no I/O at all;
  adapters  registry/, resolver, kube, metrics, certs: the only modules that touch the network;
  glue      app, webhook, audit, cli: thin kopf / argparse wiring.
"""

__version__ = "0.1.0"
