"""Kubernetes CRI v1: hyperd as a container runtime a kubelet (or crictl) drives over gRPC on a unix socket.

A pod sandbox is a pod kept alive with no container (one VM); containers are added to it created, then started.
This layer calls only the pod manager and the image store, as the REST API does (daemon/api.py), and the CNI module
(network/cni) for the sandboxes' networks.

    server.py   the grpc.aio server on the CRI socket, started and stopped with hyperd
    runtime.py  RuntimeService: sandboxes, containers, exec, stats, events, status
    images.py   ImageService: pull (with the request's auth), list, status, remove, filesystem usage
    convert.py  CRI configs -> pod and container specs (and what could not be applied, said out loud)
    index.py    the CRI's view of the pod manager's pods (ids, prefixes, filters)
    status.py   CRI status and stats messages from that view
    events.py   GetContainerEvents' stream
    network.py  the sandbox network step: CNI (network/cni): a namespace + ADD per sandbox, DEL, gc at start
    streaming/  the streaming server (exec, attach, port-forward over SPDY/3.1 and WebSockets), on the pod core
    errors.py   hyperd's errors -> gRPC status codes, at one boundary
    build_api.py  `make cri-api`: api.proto from k8s.io/cri-api through the Go module proxy, compiled here
"""
