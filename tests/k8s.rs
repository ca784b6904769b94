//! The deployment artifacts: `kubectl kustomize k8s/` renders, core objects validate against
//! Kubernetes 1.37 schemas, the Deployment is hardened, every shipped config inside is the one
//! the other tests exercise, the Dockerfile passes hadolint, and the Istio / Envoy Gateway
//! examples say what envoy-facts.md requires.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn venv_tool(name: &str) -> Option<PathBuf> {
    let p = Path::new(ROOT).join(".venv/bin").join(name);
    if p.is_file() {
        return Some(p);
    }
    common::tool(name)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap()
}

fn rendered() -> Option<Vec<Value>> {
    let kubectl = venv_tool("kubectl")?;
    let out = Command::new(kubectl).args(["kustomize", "k8s/"]).current_dir(ROOT).output().unwrap();
    assert!(out.status.success(), "kubectl kustomize k8s/: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    Some(serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect())
}

fn kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == k).collect()
}

fn configmap_file<'a>(docs: &'a [Value], prefix: &str, key: &str) -> &'a str {
    kind(docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no ConfigMap {prefix}"))["data"][key]
        .as_str()
        .unwrap()
}

#[test]
fn kustomize_renders_and_core_objects_validate() {
    let Some(docs) = rendered() else { return };
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for want in ["Deployment", "Service", "ConfigMap", "Secret", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    let Some(validator) = venv_tool("kubernetes-validate") else { return };
    let dir = std::env::temp_dir().join(format!("hallpass-k8s-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        // prometheus-operator CRDs have no built-in schema; they are checked below instead.
        if d["apiVersion"].as_str().unwrap().starts_with("monitoring.coreos.com") {
            continue;
        }
        let f = dir.join(format!("{i}.yaml"));
        std::fs::write(&f, serde_yaml::to_string(d).unwrap()).unwrap();
        files.push(f);
    }
    let validate = |files: &[PathBuf]| Command::new(&validator).arg("--strict").args(files).output().unwrap();
    let out = validate(&files);
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator does reject a wrong object (so the pass above means something).
    let bad = dir.join("bad.yaml");
    let mut deployment = kind(&docs, "Deployment")[0].clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = Value::from("Always");
    std::fs::write(&bad, serde_yaml::to_string(&deployment).unwrap()).unwrap();
    assert!(!validate(&[bad]).status.success(), "a misspelt field must fail validation");
}

#[test]
fn deployment_is_hardened_and_runs_hallpass_as_a_native_sidecar() {
    let Some(docs) = rendered() else { return };
    let d = kind(&docs, "Deployment")[0];
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], Value::from(true));
    assert_eq!(spec["automountServiceAccountToken"], Value::from(false));
    let hallpass = spec["initContainers"].as_sequence().unwrap().iter().find(|c| c["name"] == "hallpass").unwrap();
    assert_eq!(hallpass["restartPolicy"], "Always", "native sidecar");
    assert!(hallpass["readinessProbe"]["grpc"]["port"] == 9191, "gRPC readiness probe");
    assert_eq!(hallpass["livenessProbe"]["httpGet"]["path"], "/healthz");
    let all: Vec<&Value> =
        spec["initContainers"].as_sequence().unwrap().iter().chain(spec["containers"].as_sequence().unwrap()).collect();
    assert_eq!(all.len(), 3);
    for c in all {
        let sc = &c["securityContext"];
        let name = c["name"].as_str().unwrap();
        assert_eq!(sc["readOnlyRootFilesystem"], Value::from(true), "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], Value::from(false), "{name}");
        assert_eq!(sc["runAsNonRoot"], Value::from(true), "{name}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
        assert!(
            c["resources"]["limits"]["memory"].is_string() && c["resources"]["requests"]["cpu"].is_string(),
            "{name}"
        );
        for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
            assert!(m.get("subPath").is_none(), "{name}: subPath mounts never update (no reload)");
        }
    }
    // Upstream credentials: a Secret mounted into hallpass only, where the example policy's
    // credential files are, readable by hallpass's group only.
    let mounts = |c: &Value, path: &str| {
        c["volumeMounts"].as_sequence().into_iter().flatten().any(|m| m["mountPath"] == path && m["readOnly"] == true)
    };
    assert!(mounts(hallpass, "/var/run/secrets/hallpass"));
    for c in spec["containers"].as_sequence().unwrap() {
        assert!(!mounts(c, "/var/run/secrets/hallpass"), "only hallpass holds the credentials");
    }
    let vol = spec["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == "upstream-credentials").unwrap();
    assert_eq!(vol["secret"]["secretName"], "hallpass-upstream-credentials");
    assert_eq!(vol["secret"]["defaultMode"], Value::from(0o440));
    let policy = hallpass::policy::Policy::from_yaml(&read("config/policy.yaml"), "config/policy.yaml").unwrap();
    for c in &policy.credentials {
        let hallpass::credentials::Source::File(f) = &c.source else { continue };
        assert!(f.starts_with("/var/run/secrets/hallpass"), "{}: mounted from the Secret", c.name);
    }
}

#[test]
fn shipped_configs_inside_the_manifests_are_the_tested_ones() {
    let Some(docs) = rendered() else { return };
    // Envoy: byte for byte the config the end-to-end suite runs.
    assert_eq!(
        configmap_file(&docs, "envoy-config", "envoy.yaml"),
        read("envoy/envoy.yaml"),
        "k8s/envoy.yaml drifted from envoy/envoy.yaml"
    );
    // Policy: the example policy, in dry run for a first rollout.
    let k8s_policy = configmap_file(&docs, "hallpass-policy", "policy.yaml");
    let expected = read("config/policy.yaml")
        .replace("  mode: enforce\n", "  mode: dry_run          # roll out in dry run first: see docs/deploy.md\n");
    assert_eq!(k8s_policy, expected, "k8s/policy.yaml must be config/policy.yaml in dry run");
    let p = hallpass::policy::Policy::from_yaml(k8s_policy, "k8s/policy.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.settings.mode, hallpass::policy::Mode::DryRun);
    // Server config: loads with the real settings code (unknown keys would fail).
    let dir = std::env::temp_dir().join(format!("hallpass-k8s-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("hallpass.yaml");
    std::fs::write(&cfg, configmap_file(&docs, "hallpass-config", "hallpass.yaml")).unwrap();
    let s = hallpass::settings::ServerSettings::resolve(hallpass::settings::Overrides {
        config: Some(cfg),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.policy, Path::new("/etc/hallpass/policy/policy.yaml"));
    assert_eq!(s.max_body_bytes, 65536, "matches Envoy's max_request_bytes");
    // The policy is mounted as a directory at that path.
    let d = kind(&docs, "Deployment")[0];
    let hallpass = &d["spec"]["template"]["spec"]["initContainers"][0];
    assert!(hallpass["volumeMounts"].as_sequence().unwrap().iter().any(|m| m["mountPath"] == "/etc/hallpass/policy"));
    // Monitoring: the PrometheusRule carries exactly the promtool-tested alerts; the dashboard
    // ConfigMap carries the tested dashboard.
    let rule = kind(&docs, "PrometheusRule")[0];
    let alerts: Value = serde_yaml::from_str(&read("k8s/monitoring/hallpass-alerts.yaml")).unwrap();
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);
    assert_eq!(
        configmap_file(&docs, "hallpass-grafana-dashboard", "hallpass-dashboard.json"),
        read("k8s/monitoring/hallpass-dashboard.json")
    );
    // The Envoy config, and the global rate limit example built on it (docs/scaling-out.md),
    // validate with the real Envoy.
    if let Some(envoy) = venv_tool("envoy") {
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, read("k8s/jwks.json")).unwrap();
        for file in ["envoy/envoy.yaml", "envoy/ratelimit-example.yaml"] {
            let cfg = dir.join(Path::new(file).file_name().unwrap());
            std::fs::write(&cfg, read(file).replace("/etc/hallpass/jwks.json", jwks.to_str().unwrap())).unwrap();
            let out = Command::new(&envoy).args(["--mode", "validate", "-c", cfg.to_str().unwrap()]).output().unwrap();
            assert!(out.status.success(), "envoy --mode validate {file}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let Some(hadolint) = venv_tool("hadolint") else { return };
    let out = Command::new(hadolint).arg("Dockerfile").current_dir(ROOT).output().unwrap();
    assert!(out.status.success(), "hadolint:\n{}", String::from_utf8_lossy(&out.stdout));
    let df = read("Dockerfile");
    assert!(df.contains("distroless") && df.contains("USER 65532"), "distroless, non-root");
}

#[test]
fn mesh_examples_fail_closed_and_send_the_body() {
    let istio: Vec<Value> = serde_yaml::Deserializer::from_str(&read("envoy/istio/mesh-config.yaml"))
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let provider = &istio[0]["spec"]["meshConfig"]["extensionProviders"][0];
    assert_eq!(provider["name"], "hallpass");
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(grpc["failOpen"], Value::from(false));
    assert_eq!(grpc["includeRequestBodyInCheck"]["packAsBytes"], Value::from(true));
    let policy: Value = serde_yaml::from_str(&read("envoy/istio/authorization-policy.yaml")).unwrap();
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    assert_eq!(policy["spec"]["provider"]["name"], provider["name"]);
    let eg: Value = serde_yaml::from_str(&read("envoy/envoy-gateway/security-policy.yaml")).unwrap();
    assert_eq!(eg["spec"]["extAuth"]["failOpen"], Value::from(false));
    assert_eq!(eg["spec"]["extAuth"]["bodyToExtAuth"]["maxRequestBytes"], 65536);
    assert_eq!(eg["spec"]["extAuth"]["grpc"]["backendRefs"][0]["port"], 9191);
}
