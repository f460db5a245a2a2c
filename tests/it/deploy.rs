//! deploy/ checked by what reads it: the Helm chart as rendered by `helm template`
//! (probes, security context, the config checksum, the stop budget), and the
//! Grafana dashboard's queries parsed by promtool and matched against the metrics a
//! real daemon exports. scripts/deploy-check installs helm and promtool (cached
//! under /var/cache/clarion/go-bin) and runs the tools' own checks; these tests need
//! the tools, and skip loudly without them.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool from $CLARION_<NAME>, else scripts/deploy-check's cache.
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let var = format!("CLARION_{}", name.to_uppercase());
    let path = std::env::var_os(&var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/clarion/go-bin").join(name));
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED {test}: {} not found (run scripts/deploy-check, or set {var})",
            path.display()
        );
        None
    }
}

/// `helm template` of the chart with `sets`, as JSON documents (parsed with the
/// test peers' Python and PyYAML, scripts/test-requirements.txt).
fn render(helm: &Path, python: &Path, sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(helm);
    cmd.arg("template")
        .arg("t")
        .arg(repo().join("deploy/helm/clarion"));
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut py = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    use std::io::Write as _;
    py.stdin
        .take()
        .ok_or("stdin")?
        .write_all(&out.stdout)
        .map_err(|e| e.to_string())?;
    let json = py.wait_with_output().map_err(|e| e.to_string())?;
    serde_json::from_slice(&json.stdout).map_err(|e| e.to_string())
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn sha256_hex(data: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_chart_renders_probes_security_context_and_the_config_checksum() {
    let test = "the_chart_renders_probes_security_context_and_the_config_checksum";
    let (Some(helm), Some(python)) = (tool("helm", test), clarion_tests::python(test)) else {
        return;
    };
    let docs = render(&helm, &python, &[]).expect("helm template");
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];

    // The probes ask the daemon's own endpoints on the metrics port, which the
    // config opens to the pod network.
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["ports"][0]["name"], "metrics");
    assert_eq!(container["ports"][0]["containerPort"], 9464);
    let config = kind(&docs, "ConfigMap")["data"]["clarion.toml"]
        .as_str()
        .expect("config");
    assert!(config.contains("listen = \"0.0.0.0:9464\""), "{config}");
    let example = std::fs::read_to_string(repo().join("config/clarion.toml")).expect("example");
    assert_eq!(
        config.replace("0.0.0.0:9464", "127.0.0.1:9464"),
        example,
        "the ConfigMap is config/clarion.toml"
    );

    // Non-root, read-only root file system, no capabilities, no escalation.
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));

    // The checksum is the config's, so a config change rolls the pods.
    let checksum = pod["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .expect("checksum/config");
    assert_eq!(checksum, sha256_hex(config));
    let other = render(&helm, &python, &["config=[kafka]\nbrokers = \"k:9092\"\n"])
        .expect("helm template with a config");
    let other_checksum = kind(&other, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        ["checksum/config"]
        .as_str()
        .expect("checksum")
        .to_string();
    assert_ne!(other_checksum, checksum);
    let other_config = kind(&other, "ConfigMap")["data"]["clarion.toml"]
        .as_str()
        .expect("config");
    assert_eq!(other_checksum, sha256_hex(other_config));

    // A rolling update never takes a replica away before its successor is up, and
    // a stop gets longer than the daemon's bounded drain; a shorter budget is
    // refused at render time.
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 60);
    let err = render(&helm, &python, &["terminationGracePeriodSeconds=40"])
        .expect_err("a grace period under shutdown_grace + 15 s is refused");
    assert!(err.contains("terminationGracePeriodSeconds"), "{err}");
    let pdb = kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
}

/// A container's args, as strings.
fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("an arg is a string"))
        .collect()
}

/// The value that follows `flag` in `args`.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| *a == flag)?;
    args.get(i + 1).copied()
}

#[test]
fn the_chart_runs_the_weekly_drill_with_the_daemons_config_and_secrets() {
    let test = "the_chart_runs_the_weekly_drill_with_the_daemons_config_and_secrets";
    let (Some(helm), Some(python)) = (tool("helm", test), clarion_tests::python(test)) else {
        return;
    };
    let docs = render(&helm, &python, &["existingSecret=clarion-secrets"]).expect("helm template");
    let daemon_pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let daemon = &daemon_pod["containers"][0];
    let cronjob = kind(&docs, "CronJob");

    // Weekly, one at a time, and a failed drill is not retried until it passes.
    assert_eq!(cronjob["spec"]["schedule"], "0 10 * * 2");
    assert_eq!(cronjob["spec"]["concurrencyPolicy"], "Forbid");
    let job = &cronjob["spec"]["jobTemplate"]["spec"];
    assert_eq!(job["backoffLimit"], 0);
    let pod = &job["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");

    // `clarion drill --all`, reading the daemon's config file.
    let container = &pod["containers"][0];
    let drill = args(container);
    assert_eq!(drill[0], "drill", "{drill:?}");
    assert!(drill.contains(&"--all"), "{drill:?}");
    assert!(
        drill.contains(&"--failover"),
        "every backup is drilled: {drill:?}"
    );
    assert_eq!(flag_value(&drill, "--timeout"), Some("5m"), "{drill:?}");
    assert_eq!(
        flag_value(&drill, "--config"),
        flag_value(&args(daemon), "--config"),
        "{drill:?}"
    );

    // The same config volume and mount, secrets, image and confinement as the
    // daemon's pods.
    assert_eq!(pod["volumes"], daemon_pod["volumes"]);
    assert_eq!(container["volumeMounts"], daemon["volumeMounts"]);
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        "clarion-secrets"
    );
    assert_eq!(container["envFrom"], daemon["envFrom"]);
    assert_eq!(container["image"], daemon["image"]);
    assert_eq!(pod["securityContext"], daemon_pod["securityContext"]);
    assert_eq!(container["securityContext"], daemon["securityContext"]);
    assert_eq!(pod["automountServiceAccountToken"], false);

    // A drill pod is not a replica: neither the metrics Service nor the
    // PodDisruptionBudget selects it.
    let labels = &job["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_object()
            .expect("a selector")
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    assert!(!selects(&kind(&docs, "Service")["spec"]["selector"]));
    assert!(!selects(
        &kind(&docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    ));

    let own_only = render(&helm, &python, &["drill.failover=false"]).expect("helm template");
    let own_args = args(
        &kind(&own_only, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
            [0],
    );
    assert!(!own_args.contains(&"--failover"), "{own_args:?}");

    let disabled = render(&helm, &python, &["drill.enabled=false"]).expect("helm template");
    assert!(
        disabled.iter().all(|d| d["kind"] != "CronJob"),
        "drill.enabled=false renders no CronJob"
    );
    kind(&disabled, "Deployment");
}

/// The metric names a PromQL text uses (a histogram's by its base name).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("clarion_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_parses_and_uses_only_metrics_a_real_run_exports() {
    let test = "every_dashboard_query_parses_and_uses_only_metrics_a_real_run_exports";
    let (Some(promtool), Some(brokers)) = (tool("promtool", test), clarion_tests::kafka(test))
    else {
        return;
    };
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/clarion.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    // promtool has no "check this expression": each query becomes a recording rule,
    // and `promtool check rules` parses them all (JSON is YAML).
    let rules = serde_json::json!({"groups": [{
        "name": "dashboard",
        "rules": exprs.iter().enumerate().map(|(i, e)| serde_json::json!({
            "record": format!("clarion:dashboard:query{i}"),
            "expr": e,
        })).collect::<Vec<_>>(),
    }]});
    let file = std::env::temp_dir().join(format!(
        "{}.rules.json",
        clarion_tests::unique_topic("dash")
    ));
    std::fs::write(&file, rules.to_string()).expect("rules file");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the dashboard and the alert rules use is on a real daemon's
    // /metrics, before any traffic.
    let (mut daemon, _, page) = crate::ops::ready_daemon(&brokers, "deploy-dash").await;
    let exported = crate::ops::sampled_names(&page);
    let alerts = std::fs::read_to_string(repo().join("deploy/prometheus/clarion.rules.yaml"))
        .expect("alert rules");
    let mut used = metric_names(&exprs.join("\n"));
    used.extend(metric_names(&alerts));
    let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{page}");
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait(std::time::Duration::from_secs(60)).await,
        Some(0)
    );
}
