"""The Helm charts (charts/): rendered and linted by Helm's own Go code (helm-python-sdk, no helm
binary, no cluster), every rendered object checked against the Kubernetes API schema, and the
hardening of RELIABILITY 18 asserted on what they render, for the default values and for others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import _helm

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "charts" / "fivesafes-tes-gateway"
TRE = ROOT / "charts" / "fivesafes-tes-tre"

# What each chart requires, and nothing else: "the default values".
GATEWAY_REQUIRED = {
    "publicUrl": "https://tes.example.org",
    "oidc": {"issuer": "https://idp.example.org/realms/f"},
}
TRE_REQUIRED = {
    "tre": "uk-tre",
    "gateway": {"url": "https://tes.example.org"},
    "api": {"oidc": {"issuer": "https://idp.tre.example/realms/uk"}},
}

GATEWAY_OTHER = {
    **GATEWAY_REQUIRED,
    "replicas": 4,
    "image": {"digest": "sha256:" + "a" * 64, "pullPolicy": "Always"},
    "database": {"type": "postgresql", "existingSecret": "pg-url", "urlKey": "dsn"},
    "results": {
        "endpointUrl": "https://s3.example.org",
        "bucket": "released",
        "credentials": {"existingSecret": "results-s3"},
        "deliveryBuckets": ["deliveries"],
    },
    "metricsToken": {"existingSecret": "metrics", "key": "token"},
    "allowedImages": ["registry.tre.example/approved/*"],
    "settings": {"FIVESAFES_ENVIRONMENT": "prod", "FIVESAFES_LEASE_TTL_S": "90"},
    "imagePullSecrets": ["registry-login"],
}
TRE_OTHER = {
    **TRE_REQUIRED,
    "database": {"type": "postgresql", "existingSecret": "agent-pg"},
    "airlock": {"endpointUrl": "https://minio.tre.internal", "credentials": {"existingSecret": "airlock-s3"}},
    "executor": {
        "backend": "kubernetes",
        "kubernetes": {"namespace": "uk-tasks", "storageClass": "fast", "airlockPort": 9000},
    },
    "policy": {
        "allowed_images": ["registry.tre.example/approved/*"],
        "max_cpu_cores": 4,
        "max_ram_gb": 16,
        "review": {"required_approvals": 2, "auto_release": False},
        "checks": {"small_cell": {"threshold": 20}},
    },
    "settings": {"FIVESAFES_AGENT_REPORT_GRANULARITY_S": "10"},
}
TRE_PAGES = {
    **TRE_REQUIRED,
    "api": {
        "oidc": {"issuer": "https://idp.tre.example/realms/uk"},
        "web": {
            "enabled": True,
            "publicUrl": "https://review.tre.example",
            "existingSecret": "agent-web",
            "clientSecretKey": "client-secret",
        },
    },
}
TRE_SQLITE_TES = {**TRE_REQUIRED, "executor": {"backend": "tes"}, "api": {"enabled": False}}
TRE_DOCKER = {
    **TRE_REQUIRED,
    "executor": {
        "backend": "docker",
        "docker": {"host": "tcp://docker.tre.internal:2376", "tlsSecret": "dtls"},
    },
}

CASES = {
    "gateway-default": (GATEWAY, GATEWAY_REQUIRED),
    "gateway-replicas-external-pg": (GATEWAY, GATEWAY_OTHER),
    "gateway-sqlite-one-replica": (
        GATEWAY,
        {**GATEWAY_REQUIRED, "replicas": 1, "database": {"type": "sqlite"}},
    ),
    "tre-default-kubernetes": (TRE, TRE_REQUIRED),
    "tre-kubernetes-external-pg": (TRE, TRE_OTHER),
    "tre-tes-no-api": (TRE, TRE_SQLITE_TES),
    "tre-docker-remote-engine": (TRE, TRE_DOCKER),
    "tre-pages": (TRE, TRE_PAGES),
}


def rendered(case: str) -> list[dict[str, Any]]:
    chart, values = CASES[case]
    return _helm.render(chart, values, namespace="fivesafes")


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            out.append((f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "Pod":
            out.append((f"Pod/{obj['metadata']['name']}", obj["spec"]))
    return out


@pytest.mark.parametrize("case", CASES)
def test_chart_renders_and_lints(case):
    chart, values = CASES[case]
    objects = rendered(case)
    assert {o["kind"] for o in objects} >= {"ServiceAccount", "Deployment"}
    assert _helm.lint(chart, values) == []


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_is_valid_for_a_current_kubernetes(case):
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions

    version = _helm.KUBERNETES_VERSION
    assert version in all_versions()  # bundled: validated offline
    for obj in rendered(case):
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_every_pod_is_hardened(case):
    """RELIABILITY 18 on the services' own pods: Pod Security restricted, and no escape vector."""
    pods = pod_specs(rendered(case))
    assert pods
    for where, spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
            assert not spec.get(key), (where, key)
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, (where, volume)
            assert "docker.sock" not in json.dumps(volume), (where, volume)
        mounts = {}
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["privileged"] is False, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert container["resources"]["limits"], where
            mounts.update({m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])})
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], where  # the only writable place but the data dir


def test_the_gateway_mounts_no_account_token_and_is_probed():
    objects = rendered("gateway-replicas-external-pg")
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert account["automountServiceAccountToken"] is False
    for _, spec in pod_specs(objects):
        assert spec["automountServiceAccountToken"] is False
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize(
    "case", ["tre-default-kubernetes", "tre-kubernetes-external-pg", "tre-docker-remote-engine"]
)
def test_the_agent_is_probed_on_its_health_routes(case):
    """Liveness and start-up on /healthz, readiness on /readyz, on the port of the TRE's own API."""
    ((_, spec),) = pod_specs(rendered(case))
    (container,) = spec["containers"]
    (port,) = container["ports"]
    probes = {
        kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert probes == {
        "livenessProbe": ("/healthz", port["name"]),
        "readinessProbe": ("/readyz", port["name"]),
        "startupProbe": ("/healthz", port["name"]),
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FIVESAFES_AGENT_ADMIN_LISTEN"] == f"0.0.0.0:{port['containerPort']}"


def test_an_agent_without_its_api_has_no_port_to_probe():
    ((_, spec),) = pod_specs(rendered("tre-tes-no-api"))
    (container,) = spec["containers"]
    assert not {"ports", "livenessProbe", "readinessProbe", "startupProbe"} & set(container)


def test_the_gateway_runs_several_replicas_with_a_disruption_budget_by_default():
    objects = rendered("gateway-default")
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    (pdb,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_migrations_run_as_a_helm_hook_before_install_and_upgrade():
    objects = rendered("gateway-replicas-external-pg")
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["fivesafes-tes", "db", "upgrade"]
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in container["env"]}
    assert env["FIVESAFES_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg-url", "key": "dsn"}
    assert not [
        o for o in rendered("gateway-sqlite-one-replica") if o["kind"] == "Job"
    ]  # one replica migrates at start


def test_the_agent_is_bound_to_a_minimal_role_in_the_task_namespace_only():
    objects = rendered("tre-kubernetes-external-pg")
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "uk-tasks"
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch", "delete"},
        ("", "pods/log"): {"get"},
        ("", "persistentvolumeclaims"): {"create", "get", "list", "watch", "patch", "delete"},
        ("", "secrets"): {"create", "get", "list", "delete"},  # each task's inputs and capability
        ("networking.k8s.io", "networkpolicies"): {"get"},
    }
    assert all("*" not in verbs for verbs in granted.values())
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert binding["metadata"]["namespace"] == "uk-tasks"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "fivesafes"}
    ]
    ((_, spec),) = pod_specs(objects)
    assert spec["automountServiceAccountToken"] is True  # the kubernetes backend needs its token


def test_the_pages_get_their_session_key_and_client_secret_from_a_secret():
    (deployment,) = [o for o in rendered("tre-pages") if o["kind"] == "Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FIVESAFES_AGENT_WEB_PAGES"]["value"] == "true"
    assert env["FIVESAFES_AGENT_WEB_PUBLIC_URL"]["value"] == "https://review.tre.example"
    assert env["FIVESAFES_AGENT_WEB_SESSION_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "agent-web",
        "key": "session-key",
    }
    assert env["FIVESAFES_AGENT_WEB_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "client-secret"
    (default,) = [o for o in rendered("tre-default-kubernetes") if o["kind"] == "Deployment"]
    names = {e["name"]: e.get("value") for e in default["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert names["FIVESAFES_AGENT_WEB_PAGES"] == "false"
    assert "FIVESAFES_AGENT_WEB_SESSION_KEY" not in names


@pytest.mark.parametrize("case", ["tre-tes-no-api", "tre-docker-remote-engine"])
def test_the_agent_has_no_account_token_nor_role_without_the_kubernetes_backend(case):
    objects = rendered(case)
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding", "NetworkPolicy")]
    ((_, spec),) = pod_specs(objects)
    assert spec["automountServiceAccountToken"] is False


def test_task_pods_are_denied_all_traffic():
    from fivesafes_tes.executors.kubernetes import network_policy_violations

    objects = rendered("tre-kubernetes-external-pg")
    (policy,) = [
        o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("deny-all")
    ]
    assert network_policy_violations(policy) == []
    assert policy["metadata"]["namespace"] == "uk-tasks"
    assert policy["metadata"]["name"] == "fivesafes-tes-tasks-deny-all"  # the name the executor checks
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "fivesafes-tes", "fivesafes-tes/role": "task"}
    }
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in policy["spec"]
    assert "egress" not in policy["spec"]


def test_stage_out_pods_reach_dns_and_the_airlocks_port_only():
    from fivesafes_tes.executors.kubernetes import JobSettings, filer_network_policy_violations

    objects = rendered("tre-kubernetes-external-pg")
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy" and "filer" in o["metadata"]["name"]]
    assert policy["metadata"]["name"] == "fivesafes-tes-filer-egress"  # the name the executor checks
    assert policy["metadata"]["namespace"] == "uk-tasks"
    settings = JobSettings(
        namespace="uk-tasks", tre="uk-tre", deployment="d", filer_image="x", airlock_port=9000
    )
    assert filer_network_policy_violations(policy, settings) == []  # what the executor checks
    assert "ingress" not in policy["spec"]
    ports = {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 9000)}


@pytest.mark.parametrize("case", ["tre-default-kubernetes", "tre-kubernetes-external-pg"])
def test_the_kubernetes_executor_is_configured_with_the_agents_own_image_as_its_filer(case):
    objects = rendered(case)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FIVESAFES_AGENT_EXECUTOR"] == "kubernetes"
    assert env["FIVESAFES_AGENT_KUBERNETES_FILER_IMAGE"] == container["image"]
    assert env["FIVESAFES_AGENT_KUBERNETES_NAMESPACE"] == CASES[case][1].get("executor", {}).get(
        "kubernetes", {}
    ).get("namespace", "fivesafes-tasks")


def test_the_policy_is_the_file_the_agent_reads_and_it_loads(tmp_path):
    from fivesafes_tes.agent.policy import TrePolicy

    objects = rendered("tre-kubernetes-external-pg")
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = Path(env["FIVESAFES_AGENT_POLICY_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    (tmp_path / path.name).write_text(config["data"][path.name])
    policy = TrePolicy.load(tmp_path / path.name)
    assert policy.image_allowed("registry.tre.example/approved/stats:1")
    assert policy.review.required_approvals == 2
    assert policy.checks.for_project("any").small_cell.threshold == 20


def settings_named(objects: list[dict[str, Any]]) -> set[str]:
    return {
        e["name"]
        for _, spec in pod_specs(objects)
        for c in spec["containers"]
        for e in c.get("env", [])
        if e["name"].startswith("FIVESAFES_")
    }


def test_every_variable_set_is_a_real_setting():
    from fivesafes_tes.settings import AgentSettings, GatewaySettings, environment_variables

    gateway = set().union(*(settings_named(rendered(c)) for c in CASES if c.startswith("gateway")))
    assert gateway <= set(environment_variables(GatewaySettings)), gateway - set(
        environment_variables(GatewaySettings)
    )
    tre = set().union(*(settings_named(rendered(c)) for c in CASES if c.startswith("tre")))
    assert tre <= set(environment_variables(AgentSettings)), tre - set(environment_variables(AgentSettings))


@pytest.mark.parametrize("case", CASES)
def test_no_secret_is_rendered_from_values(case):
    """Every credential comes from a Secret by reference: no Secret object, no literal value."""
    objects = rendered(case)
    assert not [o for o in objects if o["kind"] == "Secret"]
    secret_like = ("DATABASE_URL", "ACCESS_KEY", "SECRET_KEY", "TOKEN", "PASSWORD")
    for where, spec in pod_specs(objects):
        for container in spec["containers"]:
            for env in container.get("env", []):
                if any(word in env["name"] for word in secret_like) and not env["name"].endswith("_FILE"):
                    assert "value" not in env, (where, env)
                    assert "secretKeyRef" in env["valueFrom"], (where, env)


@pytest.mark.parametrize("chart", [GATEWAY, TRE])
def test_no_secret_literal_in_default_values(chart):
    values = yaml.safe_load((chart / "values.yaml").read_text())

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, str):
            last = path.rsplit(".", 1)[-1].lower()
            if any(w in last for w in ("password", "secretkey", "accesskey", "token")):
                assert last.endswith("key") or not node, path  # only the key's name in a Secret

    walk(values, "")


@pytest.mark.parametrize(
    ("chart", "values", "words"),
    [
        (GATEWAY, {**GATEWAY_REQUIRED, "replica": 3}, "replica"),
        (GATEWAY, {**GATEWAY_REQUIRED, "oidc": {"isuser": "https://x"}}, "isuser"),
        (GATEWAY, {**GATEWAY_REQUIRED, "database": {"password": "hunter2"}}, "password"),
        (TRE, {**TRE_REQUIRED, "executor": {"backend": "podman"}}, "/executor/backend"),
        (TRE, {**TRE_REQUIRED, "policy": {"allowed_image": ["x"]}}, "allowed_image"),
        (TRE, {**TRE_REQUIRED, "policy": {"review": {"required_aprovals": 2}}}, "required_aprovals"),
    ],
)
def test_a_typo_in_values_fails(chart, values, words):
    with pytest.raises(_helm.HelmError) as failure:
        _helm.render(chart, values, namespace="fivesafes")
    assert words in str(failure.value)


@pytest.mark.parametrize(
    ("chart", "values", "words"),
    [
        (GATEWAY, {**GATEWAY_REQUIRED, "database": {"type": "sqlite"}}, "sqlite allows one replica only"),
        (GATEWAY, {**GATEWAY_REQUIRED, "replicas": 3, "database": {"type": "sqlite"}}, "replicas is 3"),
        (GATEWAY, {"publicUrl": "https://tes.example.org"}, "oidc.issuer is required"),
        (GATEWAY, {**GATEWAY_REQUIRED, "settings": {"FIVESAFES_DATABASE_URL": "x"}}, "is a secret"),
        (GATEWAY, {**GATEWAY_REQUIRED, "settings": {"FIVESAFES_WEB_SESSION_KEY": "x" * 40}}, "is a secret"),
        (TRE, {**TRE_REQUIRED, "settings": {"FIVESAFES_AGENT_AIRLOCK_SECRET_KEY": "x"}}, "is a secret"),
        (TRE, {**TRE_REQUIRED, "executor": {"backend": "docker"}}, "never mounts a node's Docker socket"),
        (TRE, {**TRE_REQUIRED, "executor": {"kubernetes": {"namespace": "fivesafes"}}}, "own namespace"),
        (TRE, {"gateway": {"url": "https://tes.example.org"}}, "tre is required"),
        (
            TRE,
            {**TRE_PAGES, "api": {**TRE_PAGES["api"], "web": {"enabled": True}}},
            "api.web.publicUrl is required",
        ),
        (
            TRE,
            {
                **TRE_PAGES,
                "api": {**TRE_PAGES["api"], "web": {"enabled": True, "publicUrl": "https://r.example"}},
            },
            "api.web.existingSecret is required",
        ),
        (TRE, {**TRE_REQUIRED, "settings": {"FIVESAFES_AGENT_WEB_SESSION_KEY": "x" * 40}}, "is a secret"),
    ],
)
def test_an_unsafe_or_incomplete_configuration_fails(chart, values, words):
    with pytest.raises(_helm.HelmError) as failure:
        _helm.render(chart, values, namespace="fivesafes")
    assert words in str(failure.value)


def policy_schema_defs() -> dict[str, Any]:
    """The agent's own policy model as JSON Schema, every object closed to unknown keys."""
    from fivesafes_tes.agent.policy import TrePolicy

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    schema = TrePolicy.model_json_schema()
    defs = schema.pop("$defs")
    defs["TrePolicy"] = schema
    close(defs)
    return defs


def test_the_policy_schema_is_the_agents_policy_model():
    """values.schema.json checks `policy` with the agent's own model; regenerate it if this fails."""
    schema = json.loads((TRE / "values.schema.json").read_text())
    expected = policy_schema_defs()
    assert {name: schema["$defs"][name] for name in expected} == expected


@pytest.mark.parametrize("chart", [GATEWAY, TRE])
def test_every_object_of_the_schema_is_closed(chart):
    schema = json.loads((chart / "values.schema.json").read_text())
    open_maps = {"/properties/settings", "/properties/nodeSelector", "/properties/affinity"}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and path not in open_maps and "additionalProperties" not in node:
                assert "properties" not in node, f"{path} accepts unknown keys"
            if "properties" in node:
                assert node.get("additionalProperties") is False, path
            for key, value in node.items():
                walk(value, f"{path}/{key}")

    walk(schema, "")


def test_the_tre_values_in_the_deployment_guide_render():
    doc = (ROOT / "docs" / "deployment.md").read_text()
    example = doc.split("# uk-tre.yaml", 1)[1].split("```", 1)[0]
    objects = _helm.render(TRE, yaml.safe_load(example), namespace="fivesafes-tre")
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "fivesafes-tasks"
