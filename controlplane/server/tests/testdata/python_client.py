"""The official Python client against skiff: create from YAML, list, and a watch loop that
survives a 410 Expired in the middle of watching (the driving Rust test compacts the
store while this script's watch is open; the client's own re-watch then gets 410).

Protocol with the driver on stdout: SYNCED <rv> after the first list, RELISTED after
recovering from the 410, SAW <name> for the object created after that."""

import sys

from kubernetes import client, config, utils, watch
from kubernetes.client.rest import ApiException

kubeconfig, manifest = sys.argv[1], sys.argv[2]
config.load_kube_config(config_file=kubeconfig)
api = client.ApiClient()
utils.create_from_yaml(api, manifest)
v1 = client.CoreV1Api()

svcs = v1.list_namespaced_service("default")
names = [s.metadata.name for s in svcs.items]
assert names == ["kubernetes", "web"], names
svc = v1.read_namespaced_service("web", "default")
assert svc.spec.cluster_ip.startswith("10.43."), svc.spec.cluster_ip

cms = v1.list_namespaced_config_map("default", label_selector="app=watched")
rv = cms.metadata.resource_version
print("SYNCED", rv, flush=True)

relisted = False
while True:
    w = watch.Watch()
    try:
        # No timeout_seconds: the client itself re-watches from the last version it saw
        # whenever the server ends the stream (min-request-timeout).
        for ev in w.stream(v1.list_namespaced_config_map, "default",
                           label_selector="app=watched", resource_version=rv):
            obj = ev["object"]
            if relisted and ev["type"] == "ADDED" and obj.metadata.name == "m1":
                print("SAW", obj.metadata.name, flush=True)
                sys.exit(0)
    except ApiException as e:
        if e.status != 410:
            raise
        cms = v1.list_namespaced_config_map("default", label_selector="app=watched")
        rv = cms.metadata.resource_version
        relisted = True
        print("RELISTED", flush=True)
