"""I/O at the edge: the registry client over an injected transport, the resolver's caches, the
Kubernetes calls kopf does not make, Events, metrics and certificates. Imports the core, never the glue.
"""
