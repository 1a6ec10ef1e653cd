//! The committed CRD YAML must be exactly what the types generate, so the
//! chart, the examples and `kubectl explain` never describe stale types.
//! Regenerate with `cargo run -p syncstore-operator -- crds > crds/syncstore.dev.yaml`.

#[test]
fn committed_yaml_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/syncstore.dev.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/syncstore.dev.yaml exists");
    let generated = syncstore_crds::crds_yaml();
    assert!(
        committed == generated,
        "crds/syncstore.dev.yaml is stale; run `cargo run -p syncstore-operator -- crds > crds/syncstore.dev.yaml`"
    );
}

#[test]
fn every_property_has_a_description() {
    use kube::CustomResourceExt;
    fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (name, schema) in props {
                let here = format!("{path}.{name}");
                if schema.get("description").is_none()
                    && !matches!(name.as_str(), "apiVersion" | "kind" | "metadata")
                {
                    missing.push(here.clone());
                }
                walk(&here, schema, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in [
        syncstore_crds::SyncStore::crd(),
        syncstore_crds::ApiKey::crd(),
    ] {
        let json = serde_json::to_value(&crd).expect("serialises");
        let schema = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk(&crd.spec.names.kind, schema, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

#[test]
fn cel_rule_and_enums_are_in_the_schema() {
    let yaml = syncstore_crds::crds_yaml();
    assert!(yaml.contains("self.minReplicas <= self.maxReplicas"));
    assert!(yaml.contains("- postgres") && yaml.contains("- mysql"));
    assert!(yaml.contains("- Retain") && yaml.contains("- Delete"));
}

/// The scope enum is the data plane's list minus read/write: `audit:read`
/// (which the data plane does not know) is refused at apply time, and
/// `tokens:issue` (which it does) is accepted.
#[test]
fn scope_enum_is_the_data_planes() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(syncstore_crds::ApiKey::crd()).expect("serialises");
    let scopes = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["scopes"];
    let listed: Vec<&str> = scopes["items"]["enum"]
        .as_array()
        .expect("an enum")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let expected: Vec<&str> = syncstore_scopes::Scope::ALL
        .iter()
        .map(|s| s.as_str())
        .filter(|s| *s != "read" && *s != "write")
        .collect();
    assert_eq!(listed, expected);
    assert!(listed.contains(&"tokens:issue") && !listed.contains(&"audit:read"));
    let description = scopes["description"].as_str().expect("described");
    for s in &expected {
        assert!(description.contains(s), "the description names {s}");
    }
}

/// The env rules of the CRD list exactly the names the operator checks
/// itself (`MANAGED_ENV`, `BOOTSTRAP_ENV`), and env names are unique (a
/// list map), as are the pod template's keyed lists: the apiserver refuses
/// a duplicate at apply instead of the operator's apply of the Deployment.
#[test]
fn env_rules_name_the_operators_lists_and_lists_are_keyed() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(syncstore_crds::SyncStore::crd()).expect("serialises");
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let spec = &root["properties"]["spec"]["properties"];
    let env = &spec["env"];
    let rules: Vec<&str> = env["x-kubernetes-validations"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    for (list, rule) in [
        (&syncstore_crds::MANAGED_ENV[..], rules[0]),
        (&syncstore_crds::BOOTSTRAP_ENV[..], rules[1]),
    ] {
        let quoted: Vec<String> = list.iter().map(|n| format!("'{n}'")).collect();
        assert!(rule.contains(&format!("[{}]", quoted.join(", "))), "{rule}");
    }
    assert_eq!(env["x-kubernetes-list-type"], "map");
    assert_eq!(
        env["x-kubernetes-list-map-keys"],
        serde_json::json!(["name"])
    );
    let tpl = &spec["podTemplate"]["properties"];
    for (field, keys) in [
        ("volumes", serde_json::json!(["name"])),
        ("volumeMounts", serde_json::json!(["mountPath"])),
        ("imagePullSecrets", serde_json::json!(["name"])),
        (
            "topologySpreadConstraints",
            serde_json::json!(["topologyKey", "whenUnsatisfiable"]),
        ),
    ] {
        assert_eq!(tpl[field]["x-kubernetes-list-type"], "map", "{field}");
        assert_eq!(tpl[field]["x-kubernetes-list-map-keys"], keys, "{field}");
    }
    // The name rule at the root is the one `is_store_name` implements.
    let name_rule = root["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .expect("a rule on the name");
    assert!(name_rule.contains("self.metadata.name"), "{name_rule}");
    for (name, ok) in [
        ("chat", true),
        ("chat-2", true),
        ("1chat", false),
        ("my.store", false),
        ("chat-", false),
        ("Chat", false),
        (&"a".repeat(63), true),
        (&"a".repeat(64), false),
    ] {
        assert_eq!(syncstore_crds::is_store_name(name), ok, "{name}");
    }
}
