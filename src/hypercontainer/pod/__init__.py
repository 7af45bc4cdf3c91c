"""The core: a pod is one VM; its containers, their processes, stdio and lifecycle."""
