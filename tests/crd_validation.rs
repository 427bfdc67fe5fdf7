//! The CRDs against the real API server: they install and become Established, `kubectl explain`
//! shows their documentation, invalid objects are rejected with a message that says what is
//! wrong, the examples are accepted, and the immutable fields cannot change.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Set once the CRDs of this checkout are installed and serving, so that tests running in
/// parallel apply them once and all wait for the same installation.
static CRDS_INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Installs the CRDs under `crds/` with server-side apply and waits until each is Established.
async fn ensure_crds(plane: &common::Plane) {
    CRDS_INSTALLED
        .get_or_init(|| common::install_crds(plane))
        .await;
}

#[path = "crd_validation/cases.rs"]
mod cases;
#[path = "crd_validation/updates.rs"]
mod updates;
use cases::*;
use updates::*;

/// The `.message("...")` of every CEL rule under `src/api/`.
fn cel_messages() -> Vec<String> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("src/api"))
        .expect("reading src/api")
        .map(|e| e.expect("a src/api entry").path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for (i, _) in text.match_indices("Rule::new(") {
            let rest = &text[i..];
            let Some(start) = rest.find(".message(\"") else {
                continue;
            };
            let msg = &rest[start + ".message(\"".len()..];
            let end = msg.find("\")").expect("the end of a rule message");
            out.push(msg[..end].to_string());
        }
    }
    out
}

/// The notice the API server adds when it skipped the CEL rules of an object with schema errors.
const RULES_NOT_CHECKED: &str = "some validation rules were not checked";

/// `Ok` when `result` is a 422 rejection whose message contains `expected` and whose every cause
/// is the expected one (or one of `also`): the object is invalid for the intended reason only.
/// Otherwise what happened instead.
fn check_rejected(
    result: Result<DynamicObject, kube::Error>,
    expected: &str,
    also: &[&str],
) -> Result<(), String> {
    let status = match result {
        Err(kube::Error::Api(s)) => s,
        Err(e) => return Err(format!("failed with a non-API error: {e}")),
        Ok(obj) => {
            return Err(format!(
                "was ACCEPTED; the spec reads back as {}",
                obj.data["spec"]
            ));
        }
    };
    if status.code != 422 || !status.message.contains(expected) {
        return Err(format!(
            "rejected with HTTP {} but not as expected\n      actual message: {}",
            status.code, status.message
        ));
    }
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    let unexpected: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .filter(|c| !c.contains(RULES_NOT_CHECKED))
        .filter(|c| !c.contains(expected) && !also.iter().any(|a| c.contains(a)))
        .collect();
    if unexpected.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "rejected for other reasons as well: {unexpected:?}\n      actual message: {}",
            status.message
        ))
    }
}

#[test]
fn every_cel_rule_message_is_exercised() {
    let create: Vec<&str> = invalid_cases().iter().map(|c| c.expected).collect();
    let updates: Vec<&str> = update_cases().iter().filter_map(|c| c.expected).collect();
    let messages = cel_messages();
    assert!(
        messages.len() >= 15,
        "found only {} CEL messages under src/api: {messages:?}",
        messages.len()
    );
    let untested: Vec<&String> = messages
        .iter()
        // `spec.engine` has a single allowed value, so no update can change it.
        .filter(|m| !m.starts_with("spec.engine is immutable"))
        .filter(|m| !create.contains(&m.as_str()) && !updates.contains(&m.as_str()))
        .collect();
    assert!(
        untested.is_empty(),
        "CEL rule messages under src/api without a case in invalid_cases() or update_cases(): {untested:#?}"
    );
}

#[tokio::test]
async fn crds_are_established_and_explained() {
    let (plane, ns) = setup!("crds-established");
    ensure_crds(&plane).await;
    let api: Api<CustomResourceDefinition> = Api::all(plane.client.clone());
    for name in [
        "brokers.conveyor.dev",
        "queues.conveyor.dev",
        "topics.conveyor.dev",
        "eventsubscriptions.conveyor.dev",
    ] {
        let crd = api.get(name).await.unwrap();
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} is not Established");
    }
    // The OpenAPI document that `kubectl explain` reads is published shortly after the CRD.
    let phrase = "each with its JSON Schema: the event contract";
    let deadline = std::time::Instant::now() + T;
    let out = loop {
        let out = ns.kubectl(&["explain", "topics.spec.eventTypes"]);
        let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
        if flat.contains(phrase) || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(phrase),
        "`kubectl explain topics.spec.eventTypes` does not show {phrase:?}:\n{out}"
    );
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_clear_message() {
    let (plane, ns) = setup!("crd-invalid-objects");
    ensure_crds(&plane).await;
    let cases = invalid_cases();
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let api = api(&plane.client, &ns.name, case.kind);
        let name = case
            .object_name
            .map_or_else(|| format!("invalid-{i}"), str::to_string);
        let obj = object(&name, case.kind, &case.body);
        let result = api.create(&PostParams::default(), &obj).await;
        if let Err(why) = check_rejected(result, case.expected, case.also) {
            failures.push(format!(
                "{} ({:?} {name} {}):\n      expected message containing: {}\n      {why}",
                case.name, case.kind, case.body, case.expected
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid objects were not rejected as expected:\n  - {}",
        failures.len(),
        cases.len(),
        failures.join("\n  - ")
    );
}

#[tokio::test]
async fn valid_bases_of_the_invalid_cases_are_accepted() {
    let (plane, ns) = setup!("crd-valid-bases");
    ensure_crds(&plane).await;
    let mut failures = Vec::new();
    for (i, case) in invalid_cases().iter().enumerate() {
        let api = api(&plane.client, &ns.name, case.kind);
        let obj = object(&format!("base-{i}"), case.kind, &case.base);
        if let Err(e) = api.create(&PostParams::default(), &obj).await {
            failures.push(format!("base of {} ({}): {e}", case.name, case.base));
        }
    }
    assert!(
        failures.is_empty(),
        "valid bases were rejected:\n  - {}",
        failures.join("\n  - ")
    );
}

#[tokio::test]
async fn valid_examples_are_accepted() {
    let (plane, ns) = setup!("crd-valid-examples");
    ensure_crds(&plane).await;
    let path = repo_path("examples/order-processing.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the example");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("parsing the example");
    let mut created = 0;
    let mut failures = Vec::new();
    for mut doc in docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        if !api_version.starts_with("conveyor.dev/") {
            continue;
        }
        let kind_name = doc["kind"].as_str().unwrap_or_default().to_string();
        let kind = Kind::from_name(&kind_name)
            .unwrap_or_else(|| panic!("unknown conveyor.dev kind {kind_name:?} in the example"));
        doc["metadata"]["namespace"] = json!(ns.name);
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let obj: DynamicObject = serde_json::from_value(doc).expect("a Kubernetes object");
        match api(&plane.client, &ns.name, kind)
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(_) => created += 1,
            Err(e) => failures.push(format!("{kind_name} {name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "example objects were rejected:\n  - {}",
        failures.join("\n  - ")
    );
    assert_eq!(created, 5, "the example holds 5 conveyor.dev objects");
}

#[tokio::test]
async fn immutable_fields_cannot_change() {
    let (plane, ns) = setup!("crd-immutable-fields");
    ensure_crds(&plane).await;
    let cases = update_cases();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let api = api(&plane.client, &ns.name, case.kind);
        let name = format!("update-{i}");
        if let Err(e) = api
            .create(
                &PostParams::default(),
                &object(&name, case.kind, &case.base),
            )
            .await
        {
            failures.push(format!(
                "{}: the valid base {} was rejected: {e}",
                case.name, case.base
            ));
            continue;
        }
        let patch = json!({ "spec": case.change });
        let result = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let outcome = match (case.expected, result) {
            (Some(expected), result) => check_rejected(result, expected, &[]),
            (None, Ok(obj)) => {
                let want = with(&case.base, case.change.clone());
                let got = &obj.data["spec"];
                // Every field the base and the change set reads back as set (defaults aside).
                let mut merged = got.clone();
                merge(&mut merged, &want);
                if &merged == got {
                    Ok(())
                } else {
                    Err(format!("accepted, but the spec reads back as {got}"))
                }
            }
            (None, Err(e)) => Err(format!("a mutable change was rejected: {e}")),
        };
        if let Err(why) = outcome {
            failures.push(format!(
                "{} ({:?} {} patched with {}):\n      expected: {}\n      {why}",
                case.name,
                case.kind,
                case.base,
                case.change,
                case.expected.unwrap_or("accepted")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} updates did not behave as expected:\n  - {}",
        failures.len(),
        cases.len(),
        failures.join("\n  - ")
    );
}
