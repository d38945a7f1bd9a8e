//! The deployment files, checked with real validators and against each
//! other (no Docker engine or cluster needed):
//! - `deploy/compose.yaml` against the compose-spec JSON schema
//!   (`check-jsonschema --builtin-schema vendor.compose-spec`);
//! - `deploy/kubernetes/*.yaml` against the Kubernetes API schemas with
//!   unknown fields rejected (`kubernetes-validate --strict`), for the
//!   oldest and the newest release we claim;
//! - what no schema sees: selectors that select, ports and probes that name
//!   declared ports, mounts of declared volumes, the log directory the
//!   server writes being the one the agent reads, Secret keys that exist;
//! - the agent configurations embedded in both load in `querywatch check`;
//! - the Dockerfile builds what CI builds, on the toolchain CI uses.
//!
//! `promtool check config deploy/prometheus/prometheus.yml` is in
//! `prometheus_rules`. The validators live in the venv `scripts/deps.sh`
//! creates (`target/pyenv`); without it these tests fail under `CI=true`
//! and are skipped, loudly, elsewhere.

use crate::support::venv_bin;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Command;

/// Kubernetes releases the manifests are validated against.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`; (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.current_dir(repo()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `deploy/kubernetes/*.yaml`, relative to the repository, in name order
/// (not `prometheus-operator/`, which needs the operator's CRDs).
fn kubernetes_files() -> Vec<String> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("deploy/kubernetes/{n}"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "expected namespace, postgres and collector manifests: {files:?}");
    files
}

#[test]
fn compose_file_matches_the_compose_spec() {
    let Some(check) = venv_bin("compose_file_matches_the_compose_spec", "check-jsonschema") else {
        return;
    };
    let (ok, out) = run(Command::new(&check).args(["--builtin-schema", "vendor.compose-spec", "deploy/compose.yaml"]));
    assert!(ok, "deploy/compose.yaml does not match the compose spec:\n{out}");
    // The validator rejects what the schema does not know (a typo'd key).
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bad = dir.path().join("compose.yaml");
    fs::write(&bad, "services:\n  collector:\n    image: querywatch:local\n    read_onyl: true\n").expect("writing");
    let (ok, out) = run(Command::new(&check).args(["--builtin-schema", "vendor.compose-spec"]).arg(&bad));
    assert!(!ok && out.contains("read_onyl"), "a misspelt key passed:\n{out}");
}

#[test]
fn kubernetes_manifests_pass_strict_schema_validation() {
    let Some(validate) = venv_bin("kubernetes_manifests_pass_strict_schema_validation", "kubernetes-validate") else {
        return;
    };
    let files = kubernetes_files();
    for version in KUBERNETES_VERSIONS {
        let (ok, out) = run(Command::new(&validate).args(["--strict", "--kubernetes-version", version]).args(&files));
        assert!(ok, "kubernetes-validate {version}:\n{out}");
        // A kind it has no schema for is only a warning: not here.
        assert!(!out.contains("WARN") && !out.contains("ERROR"), "kubernetes-validate {version}:\n{out}");
        assert!(out.contains("statefulset/postgres") && out.contains("deployment/querywatch-collector"), "{out}");
    }
}

/// Every YAML document of `files` as JSON (PyYAML in the venv), by file.
fn load_yaml(python: &Path, files: &[&str]) -> Value {
    let (ok, out) = run(Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps({f: [d for d in yaml.safe_load_all(open(f)) if d is not None] for f in sys.argv[1:]}))",
        ])
        .args(files));
    assert!(ok, "loading YAML:\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("PyYAML's JSON: {e}\n{out}"))
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

fn array<'a>(v: &'a Value, pointer: &str) -> &'a Vec<Value> {
    v.pointer(pointer).and_then(Value::as_array).unwrap_or_else(|| panic!("no array at {pointer} in {v}"))
}

/// The document of `kind` named `name` among `docs`.
fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// `selector` (a label map) is contained in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

/// The value of `-c name=value` in a PostgreSQL command line.
fn pg_setting<'a>(args: &'a [Value], name: &str) -> &'a str {
    args.iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no -c {name}=… in {args:?}"))
}

/// The value of `key = "…"` in a small TOML text.
fn toml_string<'a>(toml: &'a str, key: &str) -> &'a str {
    toml.lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim_start).and_then(|r| r.strip_prefix('=')))
        .map(|v| v.trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no {key} in\n{toml}"))
}

/// The checks of the Kubernetes manifests that no schema makes.
fn check_kubernetes(docs: &[Value]) {
    // Collector: Service -> pods, named ports, probes, scrape annotations.
    let deploy = find(docs, "Deployment", "querywatch-collector");
    let service = find(docs, "Service", "querywatch-collector");
    let pod = &deploy["spec"]["template"];
    assert!(selects(&service["spec"]["selector"], &pod["metadata"]["labels"]), "the Service selects no collector pod");
    assert!(selects(&deploy["spec"]["selector"]["matchLabels"], &pod["metadata"]["labels"]), "Deployment selector");
    let container = &array(pod, "/spec/containers")[0];
    let port_names: Vec<&str> = array(container, "/ports").iter().map(|p| str_of(p, "/name")).collect();
    let mut service_ports: Vec<u64> = Vec::new();
    for p in array(service, "/spec/ports") {
        assert!(port_names.contains(&str_of(p, "/targetPort")), "Service targetPort {p} is no container port");
        service_ports.push(p["port"].as_u64().unwrap_or_default());
    }
    service_ports.sort_unstable();
    assert_eq!(service_ports, [4317, 4318, 8080]);
    for (probe, path) in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(port_names.contains(&str_of(get, "/port")), "{probe} port is no container port");
    }
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let ann = &pod["metadata"]["annotations"];
    assert_eq!((&ann["prometheus.io/scrape"], &ann["prometheus.io/port"]), (&"true".into(), &"8080".into()));

    // PostgreSQL + agent: volumes, the shared log directory, the Secret.
    let sts = find(docs, "StatefulSet", "postgres");
    let spec = &sts["spec"]["template"]["spec"];
    let mut volumes: Vec<&str> = array(spec, "/volumes").iter().map(|v| str_of(v, "/name")).collect();
    volumes.extend(array(sts, "/spec/volumeClaimTemplates").iter().map(|v| str_of(v, "/metadata/name")));
    let containers = array(spec, "/containers");
    let by_name = |n: &str| containers.iter().find(|c| c["name"] == n).unwrap_or_else(|| panic!("no container {n}"));
    let (postgres, agent) = (by_name("postgres"), by_name("querywatch-agent"));
    let secret = find(docs, "Secret", "querywatch-postgres");
    for c in containers {
        let name = str_of(c, "/name");
        for m in array(c, "/volumeMounts") {
            assert!(volumes.contains(&str_of(m, "/name")), "{name} mounts an undeclared volume: {m}");
        }
        for key in ["requests", "limits"] {
            assert!(c["resources"][key]["memory"].is_string(), "{name}: no memory {key}");
        }
        for e in c["env"].as_array().into_iter().flatten() {
            if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                assert_eq!(r["name"], secret["metadata"]["name"], "{name}: {e}");
                assert!(secret["stringData"][str_of(r, "/key")].is_string(), "{name}: Secret has no key {r}");
            }
        }
    }
    let mount = |c: &Value, volume: &str| -> Value {
        array(c, "/volumeMounts").iter().find(|m| m["name"] == volume).cloned().unwrap_or(Value::Null)
    };
    let log_dir = pg_setting(array(postgres, "/args"), "log_directory");
    assert_eq!(mount(postgres, "pglog")["mountPath"], log_dir, "the server logs outside the shared volume");
    assert_eq!(mount(agent, "pglog")["mountPath"], log_dir);
    assert_eq!(mount(agent, "pglog")["readOnly"], true, "the agent must not write the server's logs");
    assert_eq!(spec["securityContext"]["fsGroup"], 999, "the agent reads 0640 logs through the postgres group");
    assert_eq!(pg_setting(array(postgres, "/args"), "log_file_mode"), "0640");
    let config = find(docs, "ConfigMap", "querywatch-postgres");
    let toml = str_of(config, "/data/agent.toml");
    assert_eq!(toml_string(toml, "directory"), log_dir);
    assert_eq!(mount(agent, "agent-state")["mountPath"], toml_string(toml, "state_dir"));
    assert!(toml_string(toml, "endpoint").contains("querywatch-collector.querywatch.svc:4317"));
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);

    // Both querywatch containers: non-root, read-only root filesystem, no
    // capabilities, no privilege escalation; the only writable mount is
    // the agent's state_dir (checkpoint and spool).
    let collector_pod = &pod["spec"];
    for (name, c, pod_spec) in [("collector", container, collector_pod), ("querywatch-agent", agent, spec)] {
        let sc = &c["securityContext"];
        let non_root = sc["runAsNonRoot"] == true || pod_spec["securityContext"]["runAsNonRoot"] == true;
        assert!(non_root, "{name}: runAsNonRoot");
        let uid = sc["runAsUser"].as_u64().or_else(|| pod_spec["securityContext"]["runAsUser"].as_u64());
        assert!(uid.is_some_and(|u| u > 0), "{name}: runAsUser must be a non-zero uid");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}: drop all capabilities");
        assert!(sc["capabilities"]["add"].is_null(), "{name}: adds capabilities");
        assert!(sc["privileged"] != true, "{name}: privileged");
        let writable: Vec<&str> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["readOnly"] != true)
            .map(|m| str_of(m, "/name"))
            .collect();
        let want: &[&str] = if name == "collector" { &[] } else { &["agent-state"] };
        assert_eq!(writable, want, "{name}: writable mounts");
    }
}

#[test]
fn deployment_files_agree_with_each_other() {
    let Some(python) = venv_bin("deployment_files_agree_with_each_other", "python") else { return };
    let mut files: Vec<String> = kubernetes_files();
    files.push("deploy/kubernetes/prometheus-operator/servicemonitor.yaml".into());
    files.push("deploy/compose.yaml".into());
    files.push("deploy/prometheus/prometheus.yml".into());
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    let all = load_yaml(&python, &names);
    let docs: Vec<Value> = files
        .iter()
        .filter(|f| f.starts_with("deploy/kubernetes/"))
        .flat_map(|f| array(&all, &format!("/{}", f.replace('/', "~1"))).clone())
        .collect();
    check_kubernetes(&docs);

    // The ServiceMonitor selects the collector's Service and names its port.
    let service = find(&docs, "Service", "querywatch-collector");
    let monitor = find(&docs, "ServiceMonitor", "querywatch-collector");
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]), "ServiceMonitor");
    let endpoint = &array(monitor, "/spec/endpoints")[0];
    assert!(array(service, "/spec/ports").iter().any(|p| p["name"] == endpoint["port"]), "ServiceMonitor port");
    assert_eq!(endpoint["path"], "/metrics");
    // Its job label is the Service's name label: the job the rules watch.
    let job = str_of(monitor, "/spec/jobLabel");
    assert_eq!(service["metadata"]["labels"][job], "querywatch-collector");

    // Compose: the same log directory on both sides of the shared volume.
    let compose = &array(&all, "/deploy~1compose.yaml")[0];
    let services = &compose["services"];
    let pg_args = array(services, "/postgres/command");
    let log_dir = pg_setting(pg_args, "log_directory");
    assert_eq!(pg_setting(pg_args, "log_destination"), "csvlog");
    assert_eq!(pg_setting(pg_args, "log_min_duration_statement"), "0");
    assert!(pg_setting(pg_args, "shared_preload_libraries").contains("pg_stat_statements"));
    let volumes = |svc: &str| -> Vec<String> {
        array(services, &format!("/{svc}/volumes")).iter().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    assert!(volumes("postgres").contains(&format!("pglog:{log_dir}")), "{:?}", volumes("postgres"));
    assert!(volumes("agent").contains(&format!("pglog:{log_dir}:ro")), "{:?}", volumes("agent"));
    let toml = str_of(compose, "/configs/querywatch-agent/content");
    assert_eq!(toml_string(toml, "directory"), log_dir);
    assert!(volumes("agent").contains(&format!("agent-state:{}", toml_string(toml, "state_dir"))));
    assert_eq!(toml_string(toml, "endpoint"), "http://collector:4317");
    assert!(services["collector"].is_object());
    // Both querywatch services: read-only root filesystem, no capabilities,
    // no privilege gain, not root; the agent writes only its state volume.
    for svc in ["agent", "collector"] {
        let service = &services[svc];
        assert_eq!(service["read_only"], true, "{svc}: read_only");
        assert_eq!(service["cap_drop"], serde_json::json!(["ALL"]), "{svc}: cap_drop");
        let opts: Vec<&str> = array(service, "/security_opt").iter().filter_map(Value::as_str).collect();
        assert!(opts.contains(&"no-new-privileges:true"), "{svc}: security_opt {opts:?}");
        let user = str_of(service, "/user");
        assert!(!user.is_empty() && !user.starts_with("0") && !user.starts_with("root"), "{svc}: user {user:?}");
        let mounted: Vec<String> =
            service["volumes"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
        let writable: Vec<String> = mounted.into_iter().filter(|v| !v.ends_with(":ro")).collect();
        let want: Vec<String> =
            if svc == "agent" { vec![format!("agent-state:{}", toml_string(toml, "state_dir"))] } else { vec![] };
        assert_eq!(writable, want, "{svc}: writable volumes");
    }
    // Bind mounts exist (paths relative to deploy/).
    for svc in ["prometheus", "grafana"] {
        for v in volumes(svc) {
            let source = v.split(':').next().unwrap_or_default();
            if source.starts_with('.') {
                let path = repo().join("deploy").join(source);
                assert!(path.exists(), "{svc} mounts {source}, which does not exist ({})", path.display());
            }
        }
    }
    // Prometheus scrapes the compose collector on its HTTP port.
    let prom = &array(&all, "/deploy~1prometheus~1prometheus.yml")[0];
    let job = array(prom, "/scrape_configs").iter().find(|j| j["job_name"] == "querywatch-collector").expect("job");
    assert_eq!(job["static_configs"][0]["targets"][0], "collector:8080");
    assert!(array(services, "/collector/ports").iter().any(|p| p.as_str().is_some_and(|p| p.ends_with(":8080"))));
}

/// The agent configurations embedded in compose and in the ConfigMap load:
/// `querywatch check` exits 2 on a configuration error, 1 when only its
/// checks fail (no database or collector here).
#[test]
fn embedded_agent_configs_load() {
    let Some(python) = venv_bin("embedded_agent_configs_load", "python") else { return };
    let all = load_yaml(&python, &["deploy/compose.yaml", "deploy/kubernetes/postgres.yaml"]);
    let compose = str_of(&all, "/deploy~1compose.yaml/0/configs/querywatch-agent/content").to_owned();
    let kube = array(&all, "/deploy~1kubernetes~1postgres.yaml")
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .map(|d| str_of(d, "/data/agent.toml").to_owned())
        .expect("the agent's ConfigMap");
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, toml, code) in [("compose", compose.as_str(), 1), ("kubernetes", &kube, 1), ("broken", "bogus = 1\n", 2)]
    {
        let file = dir.path().join(format!("{name}.toml"));
        fs::write(&file, toml).expect("writing the config");
        let out = Command::new(env!("CARGO_BIN_EXE_querywatch"))
            .args(["check", "--config"])
            .arg(&file)
            .args(["--endpoint", "http://127.0.0.1:9", "--node", "test"])
            .arg("--log-directory")
            .arg(dir.path())
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env_remove("QUERYWATCH_DSN")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .output()
            .expect("running querywatch check");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(code), "{name} agent config: querywatch check said:\n{text}");
    }
}

/// The image is built as CI builds (`cargo build --release --locked`) on
/// the toolchain the tests run with.
#[test]
fn dockerfile_builds_what_ci_builds() {
    let dockerfile = fs::read_to_string(repo().join("Dockerfile")).expect("reading Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked --bin querywatch"), "the build command changed");
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .expect("running rustc --version");
    let version = String::from_utf8_lossy(&rustc.stdout).split_whitespace().nth(1).unwrap_or_default().to_owned();
    let minor: String = version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
    assert!(
        dockerfile.contains(&format!("ARG RUST_VERSION={minor}\n")),
        "the Dockerfile's RUST_VERSION is not the toolchain's {minor} (rustc {version})"
    );
    for needle in [
        "FROM rust:${RUST_VERSION}-bookworm AS build",
        "FROM debian:bookworm-slim",
        "libclang-dev",
        "USER 10001:10001",
        "EXPOSE 4317 4318 8080",
        "HEALTHCHECK",
        "ENTRYPOINT [\"querywatch\"]",
        "CMD [\"--help\"]",
        "VOLUME [\"/var/lib/querywatch\"]",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle}");
    }
    let ignore = fs::read_to_string(repo().join(".dockerignore")).expect("reading .dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"), ".dockerignore must keep target/ out of the context");
}

/// The image's HEALTHCHECK, run as Docker would (its exec array, with the
/// port from `QUERYWATCH_HEALTH_PORT`): healthy against a running
/// collector, unhealthy against a port where nothing listens.
#[test]
fn dockerfile_healthcheck_probes_the_collector() {
    let dockerfile = fs::read_to_string(repo().join("Dockerfile")).expect("reading Dockerfile");
    let (_, after) = dockerfile.split_once("\nHEALTHCHECK ").expect("a HEALTHCHECK instruction");
    let exec = after.lines().find_map(|l| l.trim().strip_prefix("CMD ")).expect("HEALTHCHECK … CMD [...]");
    let argv: Vec<String> =
        serde_json::from_str(exec).unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not exec form: {e}"));
    let probe = |port: &str| {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("QUERYWATCH_HEALTH_PORT", port)
            .output()
            .expect("running the HEALTHCHECK command")
            .status
            .success()
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (collector, _grpc, api) = crate::collector_e2e::start_collector(dir.path(), "");
    let port = api.rsplit(':').next().expect("host:port").to_owned();
    assert!(probe(&port), "the HEALTHCHECK fails against a running collector on {api}");
    drop(collector);
    assert!(!probe(&port), "the HEALTHCHECK passes with the collector stopped");
}
