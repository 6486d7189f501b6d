#!/usr/bin/env python3
"""Generates controlplane/apiserver/src/protobuf/schema.rs: the protobuf field tables the
API server uses to decode `application/vnd.kubernetes.protobuf` request bodies.

Sources (both crates.io packages, read from the local cargo registry; nothing is compiled):
  * k8s-pb: prost code generated from upstream's generated.proto files. It gives every
    message's fields with their tag, wire type and label, and the nested message types.
  * k8s-openapi: serde code generated from upstream's OpenAPI document. It gives the JSON
    name of each field (prost snake_cases `clusterIPs` to `cluster_i_ps`, which cannot be
    turned back; the names are matched with case and underscores ignored).

Upstream's Go structs decide one thing neither package records: whether a scalar field is
a pointer (`*int32 replicas`) or a value (`int32 minReadySeconds`). gogo-protobuf writes
value fields even when zero, and the JSON encoder omits them then (`omitempty`); a pointer
field present with a zero value is meaningful (`replicas: 0`). POINTER_FIELDS lists the
pointer scalars of the kinds skiff serves (from upstream's types.go); a present zero of any
other scalar is dropped like Go's JSON encoder drops it.

Usage (from the workspace root; cargo fmt gives the committed layout):
  python3 controlplane/apiserver/tools/gen_protobuf_schema.py > controlplane/apiserver/src/protobuf/schema.rs && cargo fmt --all
"""
import glob
import os
import re
import sys

REGISTRY = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))
def crate_dir(name):
    c = sorted(d for r in REGISTRY for d in glob.glob(os.path.join(r, name + "-*")))
    if not c:
        sys.exit(f"{name} is not in the cargo registry: run `cargo info {name}` (downloads it) first")
    return c[-1]

PB = crate_dir("k8s-pb")
OPENAPI = crate_dir("k8s-openapi")
OPENAPI_VERSIONS = sorted(os.path.basename(d) for d in glob.glob(os.path.join(OPENAPI, "src", "v1_*")))

# (apiVersion, kind) -> k8s-pb module path and struct. The kinds skiff serves
# (skiff_api::resources) and the subresource / options bodies clients send.
ROOTS = [
    ("v1", "ConfigMap", "api::core::v1", "ConfigMap"),
    ("v1", "Endpoints", "api::core::v1", "Endpoints"),
    ("v1", "Event", "api::core::v1", "Event"),
    ("v1", "Namespace", "api::core::v1", "Namespace"),
    ("v1", "Node", "api::core::v1", "Node"),
    ("v1", "Pod", "api::core::v1", "Pod"),
    ("v1", "Secret", "api::core::v1", "Secret"),
    ("v1", "ServiceAccount", "api::core::v1", "ServiceAccount"),
    ("v1", "Service", "api::core::v1", "Service"),
    ("v1", "Binding", "api::core::v1", "Binding"),
    ("apps/v1", "DaemonSet", "api::apps::v1", "DaemonSet"),
    ("apps/v1", "Deployment", "api::apps::v1", "Deployment"),
    ("apps/v1", "ReplicaSet", "api::apps::v1", "ReplicaSet"),
    ("batch/v1", "Job", "api::batch::v1", "Job"),
    ("coordination.k8s.io/v1", "Lease", "api::coordination::v1", "Lease"),
    ("discovery.k8s.io/v1", "EndpointSlice", "api::discovery::v1", "EndpointSlice"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "api::rbac::v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "api::rbac::v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role", "api::rbac::v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "api::rbac::v1", "RoleBinding"),
    ("autoscaling/v1", "Scale", "api::autoscaling::v1", "Scale"),
    # Registered in every group version (metav1.AddToGroupVersion).
    ("*", "DeleteOptions", "apimachinery::pkg::apis::meta::v1", "DeleteOptions"),
]

# Messages with a JSON form of their own (their Go types implement MarshalJSON).
SPECIAL = {
    "apimachinery::pkg::util::intstr::IntOrString": "IntOrString",
    "apimachinery::pkg::api::resource::Quantity": "Quantity",
    "apimachinery::pkg::apis::meta::v1::Time": "Time",
    "apimachinery::pkg::apis::meta::v1::MicroTime": "MicroTime",
    "apimachinery::pkg::apis::meta::v1::Duration": "Duration",
    "apimachinery::pkg::apis::meta::v1::FieldsV1": "FieldsV1",
    "apimachinery::pkg::runtime::RawExtension": "RawExtension",
}

# Pointer scalars (Go `*T` fields of string, integer or bool type), as "Struct.jsonName",
# or "group/Struct.jsonName" where two groups have a struct of that name that differ.
POINTER_FIELDS = set("""
ObjectMeta.deletionGracePeriodSeconds
OwnerReference.controller OwnerReference.blockOwnerDeletion
DeleteOptions.gracePeriodSeconds DeleteOptions.orphanDependents DeleteOptions.propagationPolicy
DeleteOptions.ignoreStoreReadErrorWithClusterBreakingPotential
Preconditions.uid Preconditions.resourceVersion
PodSpec.terminationGracePeriodSeconds PodSpec.activeDeadlineSeconds
PodSpec.automountServiceAccountToken PodSpec.shareProcessNamespace PodSpec.priority
PodSpec.enableServiceLinks PodSpec.preemptionPolicy PodSpec.runtimeClassName
PodSpec.setHostnameAsFQDN PodSpec.hostUsers PodSpec.hostnameOverride
Container.restartPolicy EphemeralContainerCommon.restartPolicy
Lifecycle.stopSignal ContainerStatus.stopSignal
SecurityContext.privileged SecurityContext.runAsUser SecurityContext.runAsGroup
SecurityContext.runAsNonRoot SecurityContext.readOnlyRootFilesystem
SecurityContext.allowPrivilegeEscalation SecurityContext.procMount
PodSecurityContext.runAsUser PodSecurityContext.runAsGroup PodSecurityContext.runAsNonRoot
PodSecurityContext.fsGroup PodSecurityContext.fsGroupChangePolicy
PodSecurityContext.supplementalGroupsPolicy PodSecurityContext.seLinuxChangePolicy
WindowsSecurityContextOptions.gmsaCredentialSpecName WindowsSecurityContextOptions.gmsaCredentialSpec
WindowsSecurityContextOptions.runAsUserName WindowsSecurityContextOptions.hostProcess
SeccompProfile.localhostProfile AppArmorProfile.localhostProfile
Probe.terminationGracePeriodSeconds GRPCAction.service
ConfigMapKeySelector.optional SecretKeySelector.optional
ConfigMapEnvSource.optional SecretEnvSource.optional
SecretVolumeSource.defaultMode SecretVolumeSource.optional
ConfigMapVolumeSource.defaultMode ConfigMapVolumeSource.optional
KeyToPath.mode DownwardAPIVolumeSource.defaultMode DownwardAPIVolumeFile.mode
ProjectedVolumeSource.defaultMode ServiceAccountTokenProjection.expirationSeconds
ConfigMapProjection.optional SecretProjection.optional
ClusterTrustBundleProjection.name ClusterTrustBundleProjection.signerName
ClusterTrustBundleProjection.optional
HostPathVolumeSource.type
CSIVolumeSource.readOnly CSIVolumeSource.fsType
PersistentVolumeClaimSpec.storageClassName PersistentVolumeClaimSpec.volumeMode
PersistentVolumeClaimSpec.volumeAttributesClassName
AzureDiskVolumeSource.cachingMode AzureDiskVolumeSource.fsType AzureDiskVolumeSource.readOnly
AzureDiskVolumeSource.kind
ISCSIVolumeSource.initiatorName
PodResourceClaim.resourceClaimName PodResourceClaim.resourceClaimTemplateName
Toleration.tolerationSeconds
TopologySpreadConstraint.minDomains TopologySpreadConstraint.nodeAffinityPolicy
TopologySpreadConstraint.nodeTaintsPolicy
PodDNSConfigOption.value
VolumeMount.mountPropagation VolumeMount.recursiveReadOnly
ServiceSpec.allocateLoadBalancerNodePorts ServiceSpec.loadBalancerClass
ServiceSpec.internalTrafficPolicy ServiceSpec.ipFamilyPolicy ServiceSpec.trafficDistribution
ServicePort.appProtocol ClientIPConfig.timeoutSeconds
LoadBalancerIngress.ipMode PortStatus.error
EndpointPort.appProtocol EndpointAddress.nodeName
ContainerStatus.started
NodeSwapStatus.capacity
NodeRuntimeHandlerFeatures.recursiveReadOnlyMounts NodeRuntimeHandlerFeatures.userNamespaces
NodeFeatures.supplementalGroupsPolicy
Secret.immutable ConfigMap.immutable
ServiceAccount.automountServiceAccountToken
DeploymentSpec.replicas DeploymentSpec.revisionHistoryLimit DeploymentSpec.progressDeadlineSeconds
DeploymentStatus.collisionCount DeploymentStatus.terminatingReplicas
ReplicaSetSpec.replicas ReplicaSetStatus.terminatingReplicas
DaemonSetSpec.revisionHistoryLimit DaemonSetStatus.collisionCount
JobSpec.parallelism JobSpec.completions JobSpec.activeDeadlineSeconds JobSpec.backoffLimit
JobSpec.backoffLimitPerIndex JobSpec.maxFailedIndexes JobSpec.manualSelector
JobSpec.ttlSecondsAfterFinished JobSpec.completionMode JobSpec.suspend
JobSpec.podReplacementPolicy JobSpec.managedBy
PodFailurePolicyOnExitCodesRequirement.containerName
SuccessPolicyRule.succeededIndexes SuccessPolicyRule.succeededCount
JobStatus.failedIndexes JobStatus.ready JobStatus.terminating
Endpoint.hostname Endpoint.nodeName Endpoint.zone
EndpointConditions.ready EndpointConditions.serving EndpointConditions.terminating
discovery/EndpointPort.name discovery/EndpointPort.protocol discovery/EndpointPort.port
LeaseSpec.holderIdentity LeaseSpec.leaseDurationSeconds LeaseSpec.leaseTransitions
LeaseSpec.strategy LeaseSpec.preferredHolder
""".split())

SCALARS = {"string": "Str", "int32": "I32", "int64": "I64", "bool": "Bool", "double": "F64", "bytes": "Bytes"}

def pb_file(module):
    return os.path.join(PB, "src", *module.split("::"), "mod.rs")

_parsed = {}
def parse_module(module):
    """struct name -> list of (tag, rust_name, kind, label, type_text)"""
    if module in _parsed:
        return _parsed[module]
    structs = {}
    cur = None
    pending = None  # prost attribute awaiting its field line
    buf = ""
    for line in open(pb_file(module)):
        s = line.strip()
        m = re.match(r"pub struct (\w+) \{$", s)
        if m:
            cur = structs.setdefault(m.group(1), [])
            continue
        if cur is None:
            continue
        if s == "}":
            cur = None
            continue
        m = re.match(r'#\[prost\((.*)\)\]$', s)
        if m:
            pending = m.group(1)
            buf = ""
            continue
        if pending is not None and not s.startswith("///") and not s.startswith("#["):
            buf += s
            if buf.endswith(",") and buf.count("<") == buf.count(">"):
                fm = re.match(r"pub (?:r#)?(\w+):\s*(.*),$", buf)
                if not fm:
                    sys.exit(f"{module}: cannot parse field {buf!r}")
                attr = pending
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                if attr.startswith("btree_map"):
                    kv = re.match(r'btree_map = "string, (\w+)"', attr).group(1)
                    kind, label = "map:" + kv, "map"
                else:
                    kind = attr.split(",")[0].strip()
                    if kind.startswith("bytes"):
                        kind = "bytes"
                    label = "repeated" if "repeated" in attr else "optional"
                cur.append((tag, fm.group(1), kind, label, fm.group(2)))
                pending = None
    _parsed[module] = structs
    return structs

def resolve(module, type_text):
    """The (module, struct) a message field's Rust type names."""
    t = type_text
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        t = t.replace(wrapper, "")
    m = re.search(r"BTreeMap<::prost::alloc::string::String,\s*(.*)>", t)
    if m:
        t = m.group(1)
    t = t.rstrip(">").strip().rstrip(",").strip()
    parts = t.split("::")
    mod = module.split("::")
    while parts and parts[0] == "super":
        parts.pop(0)
        mod.pop()
    if parts and parts[0] == "crate":
        parts.pop(0)
        mod = []
    return "::".join(mod + parts[:-1]), parts[-1]

_openapi = {}
def json_names(module, struct):
    """normalized name -> JSON name, from k8s-openapi's Deserialize impl of the struct, or
    None when k8s-openapi has no such struct (Go structs only ever embedded inline, such as
    ProbeHandler, have no OpenAPI definition of their own)."""
    key = (module, struct)
    if key in _openapi:
        return _openapi[key]
    names = None
    for v in OPENAPI_VERSIONS:
        d = os.path.join(OPENAPI, "src", v, *module.split("::"))
        for f in glob.glob(os.path.join(d, "*.rs")):
            text = open(f).read()
            m = re.search(r"pub struct (\w+) \{", text)
            if not m or m.group(1).lower() != struct.lower():
                continue
            names = names or {}
            for j in re.findall(r'"([A-Za-z0-9_$]+)" => Field::Key_', text):
                names.setdefault(j.replace("_", "").lower(), j)
    _openapi[key] = names
    return names

_module_names = {}
def module_json_names(module):
    """Every JSON field name k8s-openapi knows in a module, for structs it has no definition
    of (their fields appear in the structs that embed them)."""
    if module not in _module_names:
        names = {}
        for v in OPENAPI_VERSIONS:
            d = os.path.join(OPENAPI, "src", v, *module.split("::"))
            for f in glob.glob(os.path.join(d, "*.rs")):
                for j in re.findall(r'"([A-Za-z0-9_$]+)" => Field::Key_', open(f).read()):
                    names.setdefault(j.replace("_", "").lower(), j)
        _module_names[module] = names
    return _module_names[module]

def go_name(module, struct):
    """Upstream's (OpenAPI's) spelling of a type name: prost writes `PodIp` for `PodIP`."""
    for v in OPENAPI_VERSIONS:
        d = os.path.join(OPENAPI, "src", v, *module.split("::"))
        for f in glob.glob(os.path.join(d, "*.rs")):
            m = re.search(r"pub struct (\w+) \{", open(f).read())
            if m and m.group(1).lower() == struct.lower():
                return m.group(1)
    return struct

def main():
    order = []
    index = {}
    queue = [(m, s) for _, _, m, s in ROOTS]
    while queue:
        key = queue.pop(0)
        if key in index:
            continue
        index[key] = len(order)
        order.append(key)
        module, struct = key
        if "::".join(key) in SPECIAL:
            continue
        fields = parse_module(module).get(struct)
        if fields is None:
            sys.exit(f"k8s-pb has no struct {struct} in {module}")
        for tag, name, kind, label, ty in fields:
            if kind == "message" or kind == "map:message":
                queue.append(resolve(module, ty))
    errors = []
    used_pointers = set()
    out = []
    out.append("// @generated by controlplane/apiserver/tools/gen_protobuf_schema.py from the k8s-pb")
    out.append(f"// ({os.path.basename(PB)}) and k8s-openapi ({os.path.basename(OPENAPI)}) crates. Do not edit.")
    out.append("")
    out.append("use super::{Field, Label, Message, Special, Ty};")
    out.append("")
    out.append("pub(super) static ROOTS: &[(&str, &str, usize)] = &[")
    for av, kind, m, s in ROOTS:
        out.append(f"    ({av!r}, {kind!r}, {index[(m, s)]}),".replace("'", '"'))
    out.append("];")
    out.append("")
    out.append("pub(super) static MESSAGES: &[Message] = &[")
    for module, struct in order:
        pkg = "k8s.io." + module.replace("::", ".")
        gname = go_name(module, struct)
        group = module.split("::")[-2]
        special = SPECIAL.get(f"{module}::{struct}")
        out.append(f"    // {index[(module, struct)]}")
        out.append("    Message {")
        out.append(f'        name: "{pkg}.{gname}",')
        out.append(f"        special: {'Some(Special::' + special + ')' if special else 'None'},")
        out.append("        fields: &[")
        names = json_names(module, struct)
        if names is None:
            names = module_json_names(module)
        for tag, name, kind, label, ty in sorted(parse_module(module).get(struct, [])):
            norm = name.replace("_", "").lower()
            j = names.get(norm)
            if j is None and special:
                j = name
            if j is None and kind == "message" and label == "optional":
                # An embedded Go struct (`json:",inline"`): a nested message on the wire,
                # its fields merged into the parent object in JSON.
                out.append(f'            Field {{ tag: {tag}, json: "", ty: Ty::Message({index[resolve(module, ty)]}), label: Label::Inline }},')
                continue
            if j is None:
                errors.append(f"{module}::{struct}.{name}: no JSON name in k8s-openapi")
                continue
            if kind.startswith("map:"):
                v = kind[4:]
                t = f"Ty::Message({index[resolve(module, ty)]})" if v == "message" else f"Ty::{SCALARS[v]}"
                lab = "Label::Map"
            elif kind == "message":
                t = f"Ty::Message({index[resolve(module, ty)]})"
                lab = "Label::Repeated" if label == "repeated" else "Label::Optional"
            else:
                t = f"Ty::{SCALARS[kind]}"
                if label == "repeated":
                    lab = "Label::Repeated"
                elif f"{gname}.{j}" in POINTER_FIELDS or f"{group}/{gname}.{j}" in POINTER_FIELDS:
                    used_pointers.add(f"{gname}.{j}")
                    used_pointers.add(f"{group}/{gname}.{j}")
                    lab = "Label::Pointer"
                else:
                    lab = "Label::Optional"
            out.append(f'            Field {{ tag: {tag}, json: "{j}", ty: {t}, label: {lab} }},')
        out.append("        ],")
        out.append("    },")
    out.append("];")
    unused = POINTER_FIELDS - used_pointers
    if unused:
        # Fields of messages no served kind reaches (ListMeta) are fine; a typo is not.
        print("note: POINTER_FIELDS not reached: " + ", ".join(sorted(unused)), file=sys.stderr)
    if errors:
        sys.exit("\n".join(errors))
    print("\n".join(out))

main()
