//! Issue 15, items 4, 7, 12, 13 and 17, against a real kube-apiserver and
//! etcd and real PostgreSQL and MariaDB: every ApiKey field takes effect or
//! is refused as immutable; a spec the pods would refuse is `InvalidSpec`
//! before anything rolls out; the pod template and data-plane settings reach
//! both Deployments; the default image is the operator's own release and an
//! older one shows `VersionSkew`; `kubectl explain` and the REPLICAS column
//! tell the truth.

mod common;

use common::{condition, mysql_admin, postgres_admin, Cluster};
use serde_json::Value;
use syncstore::auth::{hash_key, Scope};
use syncstore::storage::keys;
use syncstore_operator::database::open_store;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Postgres,
    Mysql,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }

    fn admin(self) -> String {
        match self {
            Engine::Postgres => postgres_admin(),
            Engine::Mysql => mysql_admin(),
        }
    }
}

/// Applies a manifest given as YAML text; Err carries kubectl's stderr.
fn apply(c: &Cluster, yaml: &str) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!(
        "{}-{:x}.yaml",
        c.ns,
        yaml.bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
    ));
    std::fs::write(&path, yaml).expect("write");
    c.try_kubectl(&["apply", "-f", &path.to_string_lossy()])
}

/// A store named `name` with `spec` (YAML lines indented by two) added.
fn store(name: &str, engine: Engine, spec: &str) -> String {
    format!(
        "apiVersion: syncstore.dev/v1alpha1\nkind: SyncStore\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  database: {{engine: {}, adminSecretRef: {{name: db-admin, key: url}}}}\n{spec}",
        engine.name()
    )
}

fn ready(obj: &Value) -> (String, String, String) {
    cond3(obj, "Ready")
}

/// (status, reason, message) of condition `type_`.
fn cond3(obj: &Value, type_: &str) -> (String, String, String) {
    let c = condition(obj, type_).cloned().unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (s("status"), s("reason"), s("message"))
}

fn with_operator(prefix: &str, engine: Engine) -> Cluster {
    let mut c = Cluster::new(prefix);
    c.secret("db-admin", &[("url", &engine.admin())]);
    c.start_operator("op-spec");
    c
}

fn explain(c: &Cluster, path: &str) -> String {
    c.kubectl(&["explain", path])
}

/// `kubectl explain` prints the kinds' own descriptions, and field
/// descriptions name the variables the data plane really reads.
#[test]
fn explain_describes_both_kinds_and_names_the_real_variables() {
    let c = Cluster::new("op-explain");
    let ss = explain(&c, "syncstore");
    assert!(!ss.contains("Auto-generated derived type"), "{ss}");
    assert!(ss.contains("real-time key/value sync service"), "{ss}");
    let key = explain(&c, "apikey");
    assert!(!key.contains("Auto-generated derived type"), "{key}");
    assert!(key.contains("acting for one user"), "{key}");
    let limit = explain(&c, "syncstore.spec.database.connectionLimit");
    assert!(limit.contains("DB_CONNECTION_LIMIT"), "{limit}");
    assert!(!limit.contains("DATABASE_CONNECTION_LIMIT"), "{limit}");
    let strategy = explain(&c, "syncstore.spec.conflicts.defaultStrategy");
    assert!(strategy.contains("CONFLICT_DEFAULT_STRATEGY"), "{strategy}");
    let cors = explain(&c, "syncstore.spec.corsOrigins");
    assert!(cors.contains("Empty allows any origin"), "{cors}");
    let tpl = explain(&c, "syncstore.spec.podTemplate.topologySpreadConstraints");
    assert!(tpl.contains("maxSkew"), "{tpl}");
}

/// `userId` and `storeRef` are refused at apply (a key row belongs to one
/// user in one store); every other field reaches the row, and a new
/// `secretName` gets a new key there while the old key and Secret go.
async fn apikey_fields_take_effect_or_are_immutable(engine: Engine) {
    let c = with_operator("op-keyedit", engine);
    apply(&c, &store("chat", engine, "")).expect("store");
    let key = |spec: &str| {
        format!("apiVersion: syncstore.dev/v1alpha1\nkind: ApiKey\nmetadata: {{name: mobile}}\nspec: {{storeRef: chat, userId: alice{spec}}}\n")
    };
    apply(&c, &key("")).expect("key");
    c.wait_condition("apikey/mobile", "Ready", 120);

    let e = apply(&c, &key("").replace("alice", "bob")).expect_err("userId change");
    assert!(e.contains("userId is immutable"), "{e}");
    let e = apply(&c, &key("").replace("storeRef: chat", "storeRef: other"))
        .expect_err("storeRef change");
    assert!(e.contains("storeRef is immutable"), "{e}");

    let url = c.secret_value("chat-db", "DATABASE_URL").expect("url");
    let db = open_store(&url, 1).await.expect("store db");
    let secret = c.secret_value("mobile-apikey", "apiKey").expect("key");
    let id = keys::find_by_hash(&db, &hash_key(&secret))
        .await
        .expect("query")
        .expect("row")
        .id;
    apply(&c, &key(", displayName: Phone app, canRead: true, canWrite: false, scopes: [analytics:read, tokens:issue], ipRestrictions: [10.0.0.0/8], countryRestrictions: [DE], domainRestrictions: [example.com], userAgentPatterns: ['^App/'], quotas: {perMinute: 5, perHour: 50, perDay: 500, perMonth: 5000}, expiresAt: '2031-01-01T00:00:00Z'")).expect("edit");
    let row = c.eventually("the edit reaches the row", 60, || {
        let row = futures_block(keys::get(&db, &id, None)).ok()??;
        (row.name == "Phone app").then_some(row)
    });
    assert_eq!(row.user_id, "alice");
    assert!(row.can_read && !row.can_write);
    assert_eq!(
        row.scopes,
        [Scope::Read, Scope::AnalyticsRead, Scope::TokensIssue]
    );
    assert_eq!(row.ip_restrictions, ["10.0.0.0/8"]);
    assert_eq!(row.country_restrictions, ["DE"]);
    assert_eq!(row.domain_restrictions, ["example.com"]);
    assert_eq!(row.user_agent_patterns, ["^App/"]);
    assert_eq!(
        [
            row.quota_per_minute,
            row.quota_per_hour,
            row.quota_per_day,
            row.quota_per_month
        ],
        [Some(5), Some(50), Some(500), Some(5000)]
    );
    assert_eq!(row.expires_at, Some(1_924_992_000_000));

    // Unsetting takes effect too: back to the defaults.
    apply(&c, &key("")).expect("unset");
    let row = c.eventually("the unset reaches the row", 60, || {
        let row = futures_block(keys::get(&db, &id, None)).ok()??;
        (row.name == "mobile").then_some(row)
    });
    assert!(row.can_write && row.expires_at.is_none() && row.ip_restrictions.is_empty());
    assert_eq!(row.scopes, [Scope::Read, Scope::Write]);
    assert_eq!(row.quota_per_day, None);

    // A new secretName: a new key there, the old one revoked and its Secret gone.
    apply(&c, &key(", secretName: mobile-key-v2")).expect("rename");
    let fresh = c.eventually("the key in the new Secret", 60, || {
        c.secret_value("mobile-key-v2", "apiKey")
    });
    assert_ne!(fresh, secret);
    c.eventually("the old Secret is deleted", 60, || {
        c.get("secret", "mobile-apikey").is_none().then_some(())
    });
    let old = keys::get(&db, &id, None).await.expect("q").expect("row");
    assert!(!old.is_active, "the old key no longer authenticates");
    let new = keys::find_by_hash(&db, &hash_key(&fresh))
        .await
        .expect("q")
        .expect("row");
    assert!(new.is_active);
    c.eventually("status names the new Secret", 60, || {
        let k = c.must_get("apikey", "mobile");
        (k["status"]["secretName"] == "mobile-key-v2").then_some(())
    });
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_apikey_fields_take_effect_or_are_immutable() {
    apikey_fields_take_effect_or_are_immutable(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_apikey_fields_take_effect_or_are_immutable() {
    apikey_fields_take_effect_or_are_immutable(Engine::Mysql).await;
}

/// What the CRD can check is refused at apply; what only the data plane's
/// parser knows is `Ready=False`, `InvalidSpec`, naming the variable, with
/// nothing rolled out; fixing the spec rolls it out.
#[test]
fn specs_the_pods_would_refuse_are_invalid_before_rollout() {
    let c = with_operator("op-invalid", Engine::Postgres);
    // No scheme, and a wildcard no browser's Origin header ever matches.
    for origin in ["app.example.com", "'https://*.example.com'"] {
        let e = apply(
            &c,
            &store(
                "bad",
                Engine::Postgres,
                &format!("  corsOrigins: [{origin}]\n"),
            ),
        )
        .expect_err(origin);
        assert!(
            e.contains("corsOrigins must be * or origins"),
            "{origin}: {e}"
        );
    }
    let e = apply(
        &c,
        &store(
            "bad",
            Engine::Postgres,
            "  resources: {limits: {memory: lots}}\n",
        ),
    )
    .expect_err("memory: lots");
    assert!(e.contains("resources.limits must be quantities"), "{e}");
    let e = apply(
        &c,
        &store(
            "bad",
            Engine::Postgres,
            "  env: [{name: DATABASE_URL, value: 'postgres://elsewhere'}]\n",
        ),
    )
    .expect_err("an operator-managed variable");
    assert!(e.contains("env cannot set DATABASE_URL"), "{e}");

    // Accepted by the CRD, refused by the data plane: `*` (the empty
    // corsOrigins) with credentials, and a lifetime that is no duration.
    apply(
        &c,
        &store(
            "cors",
            Engine::Postgres,
            "  env: [{name: CORS_CREDENTIALS, value: 'true'}]\n",
        ),
    )
    .expect("accepted");
    apply(
        &c,
        &store(
            "query",
            Engine::Postgres,
            "  corsOrigins: ['https://app.example.com?x=1']\n",
        ),
    )
    .expect("accepted");
    apply(
        &c,
        &store(
            "jwt",
            Engine::Postgres,
            "  jwt: {accessTokenLifetime: forever}\n",
        ),
    )
    .expect("accepted");
    // One sentence naming the variable, its value, the spec field it came
    // from and the problem.
    for (name, start, end) in [
        (
            "cors",
            "invalid spec: the data plane would refuse CORS_ORIGIN='*' from spec.corsOrigins ('*' cannot be combined with CORS_CREDENTIALS=true: list the allowed origins)",
            "so nothing is rolled out until spec.corsOrigins is fixed",
        ),
        (
            "query",
            "invalid spec: the data plane would refuse CORS_ORIGIN='https://app.example.com?x=1' from spec.corsOrigins (invalid origin 'https://app.example.com?x=1': an origin has no path, query or fragment;",
            "so nothing is rolled out until spec.corsOrigins is fixed",
        ),
        (
            "jwt",
            "invalid spec: the data plane would refuse JWT_EXPIRES_IN='forever' from spec.jwt.accessTokenLifetime (invalid value 'forever'",
            "so nothing is rolled out until spec.jwt.accessTokenLifetime is fixed",
        ),
    ] {
        let (status, reason, message) = c.eventually("InvalidSpec", 60, || {
            let r = ready(&c.must_get("syncstore", name));
            (r.1 == "InvalidSpec").then_some(r)
        });
        assert_eq!(status, "False");
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.starts_with(start) && message.ends_with(end),
            "{message}"
        );
        assert!(!message.contains('\n') && !message.contains("Status {"));
        assert!(c.get("deployment", name).is_none(), "nothing rolled out");
        assert!(c.get("configmap", &format!("{name}-config")).is_none());
        assert!(
            c.get("secret", &format!("{name}-secrets")).is_none(),
            "no credentials are generated for a refused store"
        );
        let events = c.kubectl(&["get", "events", "-o", "json"]);
        assert!(events.contains("InvalidSpec"), "{events}");
    }
    // A quantity the CRD does not check: refused by the operator before
    // rollout, in one sentence.
    apply(
        &c,
        &store(
            "gpu",
            Engine::Postgres,
            "  resources: {limits: {example.com/gpu: lots}}\n",
        ),
    )
    .expect("accepted");
    let (status, _, message) = c.eventually("InvalidSpec", 90, || {
        let r = ready(&c.must_get("syncstore", "gpu"));
        (r.1 == "InvalidSpec").then_some(r)
    });
    assert_eq!(status, "False");
    assert_eq!(
        message,
        "invalid spec: resources.limits example.com/gpu is 'lots', not a quantity such as 500m, 2 or 256Mi; nothing is rolled out until the spec is fixed"
    );
    assert!(c.get("deployment", "gpu").is_none(), "nothing rolled out");

    // Fixed: it rolls out.
    apply(
        &c,
        &store(
            "jwt",
            Engine::Postgres,
            "  jwt: {accessTokenLifetime: 1h}\n",
        ),
    )
    .expect("fixed");
    c.eventually("rolled out", 90, || c.get("deployment", "jwt"));
    let cm = c.must_get("configmap", "jwt-config");
    assert_eq!(cm["data"]["JWT_EXPIRES_IN"], "1h");
}

const POD_TEMPLATE: &str = r#"  kafka: {brokers: ["kafka:9092"]}
  trustedProxies: [10.0.0.0/8, 192.168.1.1]
  geoip: {databasePath: /geoip/country.mmdb, countryHeader: CF-IPCountry}
  jwt: {accessTokenLifetime: 30m, refreshTokenLifetime: 14d}
  env:
    - {name: LOG_LEVEL, value: debug}
    - name: RATE_LIMIT_REDIS_TIMEOUT_MS
      valueFrom: {configMapKeyRef: {name: tuning, key: redis-timeout}}
  podTemplate:
    metadata:
      labels: {team: payments, app.kubernetes.io/instance: hijack}
      annotations: {prometheus.io/scrape: "true"}
    nodeSelector: {disktype: ssd}
    tolerations: [{key: dedicated, operator: Equal, value: sync, effect: NoSchedule}]
    affinity:
      podAntiAffinity:
        preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app.kubernetes.io/instance: full}}
    topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app.kubernetes.io/instance: full}}}
    imagePullSecrets: [{name: regcred}]
    serviceAccountName: syncstore-pods
    priorityClassName: high
    volumes: [{name: geoip, persistentVolumeClaim: {claimName: geoip-db, readOnly: true}}]
    volumeMounts: [{name: geoip, mountPath: /geoip, readOnly: true}]
"#;

/// Every podTemplate field and data-plane setting reaches both
/// Deployments (as the apiserver stores them) and the ConfigMap; the image
/// defaults to the operator's release; an older image shows `VersionSkew`;
/// the REPLICAS column follows the Deployment's count.
#[test]
fn pod_template_settings_image_and_replicas_reach_the_cluster() {
    let mut c = with_operator("op-podtpl", Engine::Postgres);
    apply(
        &c,
        &store("full", Engine::Postgres, POD_TEMPLATE)
            .replace("key: url}}", "key: url}, ssl: false}"),
    )
    .expect("store");
    let d = c.eventually("deployment", 90, || c.get("deployment", "full"));
    let a = c.eventually("analytics deployment", 30, || {
        c.get("deployment", "full-analytics")
    });
    for d in [&d, &a] {
        let t = &d["spec"]["template"];
        let pod = &t["spec"];
        assert_eq!(t["metadata"]["labels"]["team"], "payments");
        assert_eq!(
            t["metadata"]["labels"]["app.kubernetes.io/instance"], "full",
            "the operator's selector labels win"
        );
        assert_eq!(t["metadata"]["annotations"]["prometheus.io/scrape"], "true");
        assert!(t["metadata"]["annotations"]["syncstore.dev/config-hash"].is_string());
        assert_eq!(pod["nodeSelector"]["disktype"], "ssd");
        assert_eq!(pod["tolerations"][0]["key"], "dedicated");
        assert_eq!(
            pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
                [0]["weight"],
            100
        );
        assert_eq!(
            pod["topologySpreadConstraints"][0]["topologyKey"],
            "topology.kubernetes.io/zone"
        );
        assert_eq!(pod["imagePullSecrets"][0]["name"], "regcred");
        assert_eq!(pod["serviceAccountName"], "syncstore-pods");
        assert_eq!(pod["priorityClassName"], "high");
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "geoip-db"
        );
        let ctr = &pod["containers"][0];
        assert_eq!(ctr["volumeMounts"][0]["mountPath"], "/geoip");
        assert_eq!(
            ctr["image"],
            format!("ghcr.io/syncstore/syncstore:{}", env!("CARGO_PKG_VERSION"))
        );
        let env = ctr["env"].as_array().expect("env");
        let names: Vec<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(
            names,
            ["POD_NAME", "LOG_LEVEL", "RATE_LIMIT_REDIS_TIMEOUT_MS"]
        );
        assert_eq!(
            env[2]["valueFrom"]["configMapKeyRef"]["name"], "tuning",
            "valueFrom passes through"
        );
    }
    let cm = c.must_get("configmap", "full-config");
    let data = &cm["data"];
    assert_eq!(data["TRUSTED_PROXIES"], "10.0.0.0/8,192.168.1.1");
    assert_eq!(data["GEOIP_DB_PATH"], "/geoip/country.mmdb");
    assert_eq!(data["GEOIP_COUNTRY_HEADER"], "CF-IPCountry");
    assert_eq!(data["JWT_EXPIRES_IN"], "30m");
    assert_eq!(data["JWT_REFRESH_EXPIRES_IN"], "14d");
    assert_eq!(data["DB_SSL"], "false");
    assert_eq!(data["CORS_ORIGIN"], "*", "empty corsOrigins is any origin");

    // The operator's own release: no skew.
    c.wait_condition("syncstore/full", "Ready", 90);
    let s = c.must_get("syncstore", "full");
    let skew = condition(&s, "VersionSkew").expect("VersionSkew");
    assert_eq!(
        (skew["status"].as_str(), skew["reason"].as_str()),
        (Some("False"), Some("ImageMatchesSchema"))
    );

    // The REPLICAS column reads the Deployment's count (an HPA's choice),
    // here set the way the controller-manager would (and kept so: the
    // stand-in kubelet would mark the spec's one replica rolled out again).
    c.stop_kubelet();
    c.kubectl(&[
        "patch",
        "deployment",
        "full",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":3,"readyReplicas":2,"availableReplicas":2}}"#,
    ]);
    c.eventually("status.replicas = 3", 60, || {
        let s = c.must_get("syncstore", "full");
        (s["status"]["replicas"] == 3).then_some(())
    });
    let table = c.kubectl(&["get", "syncstore", "full"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let col = header
        .iter()
        .position(|h| *h == "REPLICAS")
        .expect("REPLICAS column");
    assert_eq!(row[col], "3", "{table}");

    // A pinned image older than the operator's release.
    apply(
        &c,
        &store(
            "old",
            Engine::Postgres,
            "  image: ghcr.io/syncstore/syncstore:0.0.1\n",
        ),
    )
    .expect("store");
    let skew = c.eventually("VersionSkew=True", 90, || {
        let s = c.must_get("syncstore", "old");
        condition(&s, "VersionSkew")
            .filter(|k| k["status"] == "True")
            .cloned()
    });
    assert_eq!(skew["reason"], "ImageOlderThanSchema");
    let message = skew["message"].as_str().unwrap_or("");
    assert!(
        message.contains("ghcr.io/syncstore/syncstore:0.0.1")
            && message.contains("upgrade the image"),
        "{message}"
    );
}

/// Issue 15 (LOW, message wording): a child name that another store's
/// child already has (store `chat` with analytics needs Deployment
/// `chat-analytics`, the Deployment of a store named `chat-analytics`) is
/// refused in one sentence that names the object, its owner and what to
/// change, not the apiserver's `spec.selector … field is immutable`; the
/// other store's Deployment is left alone. Either order.
#[test]
fn a_child_name_taken_by_another_store_is_named() {
    let c = with_operator("op-taken", Engine::Postgres);
    apply(&c, &store("chat-analytics", Engine::Postgres, "")).expect("store");
    c.wait_condition("syncstore/chat-analytics", "Ready", 90);
    apply(
        &c,
        &store(
            "chat",
            Engine::Postgres,
            "  kafka: {brokers: [\"kafka:9092\"]}\n",
        ),
    )
    .expect("store");
    let (status, _, message) = c.eventually("chat refused", 90, || {
        let r = cond3(&c.get("syncstore", "chat")?, "SpecAccepted");
        (r.1 == "InvalidSpec").then_some(r)
    });
    assert_eq!(status, "False");
    assert_eq!(
        message,
        "invalid spec: Deployment chat-analytics, which the analytics consumer of this store needs (spec.kafka is set and spec.analytics.enabled is true), already belongs to SyncStore chat-analytics, so it is left alone until spec.analytics.enabled is false or one of the two stores is renamed; the store's own Deployment, Service and PodDisruptionBudget follow the spec, its HorizontalPodAutoscaler and Ingress are not updated meanwhile"
    );
    // Finding 2: the store's own Deployment was applied before the clash
    // was found, and serves: Ready, Available and the phase's replica
    // counts follow it, while SpecAccepted carries the refusal.
    c.eventually("chat serves although refused", 60, || {
        let s = c.get("syncstore", "chat")?;
        (ready(&s).0 == "True"
            && ready(&s).1 == "Serving"
            && cond3(&s, "Available").0 == "True"
            && s["status"]["readyReplicas"] == 1)
            .then_some(())
    });
    // And what the message says is true: a replica change reaches it.
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ]);
    c.eventually("chat's Deployment follows replicas: 3", 60, || {
        (c.get("deployment", "chat")?["spec"]["replicas"] == 3).then_some(())
    });
    assert_eq!(
        cond3(&c.must_get("syncstore", "chat"), "SpecAccepted").1,
        "InvalidSpec"
    );
    let d = c.must_get("deployment", "chat-analytics");
    assert_eq!(
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "chat-analytics"
    );
    let events = c.kubectl(&["get", "events", "-o", "json"]);
    assert!(
        events.contains("already belongs to SyncStore chat-analytics"),
        "{events}"
    );

    // The other order: the analytics consumer came first.
    apply(
        &c,
        &store(
            "news",
            Engine::Postgres,
            "  kafka: {brokers: [\"kafka:9092\"]}\n",
        ),
    )
    .expect("store");
    c.eventually("news-analytics", 90, || {
        c.get("deployment", "news-analytics")
    });
    apply(&c, &store("news-analytics", Engine::Postgres, "")).expect("store");
    let (_, _, message) = c.eventually("news-analytics refused", 90, || {
        let r = cond3(&c.get("syncstore", "news-analytics")?, "SpecAccepted");
        (r.1 == "InvalidSpec").then_some(r)
    });
    assert_eq!(
        message,
        "invalid spec: Deployment news-analytics, which this store needs, already belongs to SyncStore news as its analytics consumer, so nothing is applied for this store until one of the two stores is renamed"
    );
    // What the message says: found by a dry run before any child.
    assert!(c.get("configmap", "news-analytics-config").is_none());
    assert!(c.get("secret", "news-analytics-db").is_none());
    // It has no Deployment of its own: Ready carries the refusal.
    assert_eq!(
        ready(&c.must_get("syncstore", "news-analytics")).1,
        "InvalidSpec"
    );
}

/// Names and keys no child could ever carry are refused at `kubectl
/// apply`: a store name that cannot name a Service or label a pod, a key
/// Secret name, a `pg_` schema on PostgreSQL, a bootstrap key in `env`
/// (an every-scope key in the spec, which `view` may read, and which the
/// operator would never revoke), and keys that repeat in the pod
/// template's keyed lists. Before, these were accepted and then failed in
/// the operator (`KubernetesError`, a `failed to create typed patch
/// object` dump, after the schema was made), or echoed the key back.
#[test]
fn names_and_keys_no_child_could_carry_are_refused_at_apply() {
    let c = with_operator("op-refuse", Engine::Postgres);
    let long = "a".repeat(64);
    for (name, why) in [
        ("my.store", "dot"),
        ("1chat", "leading digit"),
        (long.as_str(), "64 characters"),
    ] {
        let e = apply(&c, &store(name, Engine::Postgres, "")).expect_err(why);
        assert!(
            e.contains("a SyncStore's name must be at most 63 lower-case letters, digits and '-', start with a letter"),
            "{why}: {e}"
        );
    }
    let e = apply(
        &c,
        &store(
            "boot",
            Engine::Postgres,
            "  env: [{name: BOOTSTRAP_API_KEY, value: sk_live_hunter2}]\n",
        ),
    )
    .expect_err("a bootstrap key");
    assert!(
        e.contains("env cannot set BOOTSTRAP_API_KEY or BOOTSTRAP_USER_ID"),
        "{e}"
    );
    for (list, why) in [
        (
            "  env: [{name: LOG_LEVEL, value: debug}, {name: LOG_LEVEL, value: info}]\n",
            "spec.env",
        ),
        (
            "  podTemplate: {volumes: [{name: a, emptyDir: {}}, {name: a, emptyDir: {}}]}\n",
            "spec.podTemplate.volumes",
        ),
        (
            "  podTemplate: {volumeMounts: [{name: a, mountPath: /x}, {name: b, mountPath: /x}]}\n",
            "spec.podTemplate.volumeMounts",
        ),
        (
            "  podTemplate: {imagePullSecrets: [{name: r}, {name: r}]}\n",
            "spec.podTemplate.imagePullSecrets",
        ),
        (
            "  podTemplate: {topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}, {maxSkew: 2, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}]}\n",
            "spec.podTemplate.topologySpreadConstraints",
        ),
    ] {
        let e = apply(&c, &store("dup", Engine::Postgres, list)).expect_err(why);
        assert!(e.contains(why) && e.contains("Duplicate value"), "{why}: {e}");
    }
    let e = apply(
        &c,
        &store("sys", Engine::Postgres, "").replace("key: url}", "key: url}, schemaName: pg_temp"),
    )
    .expect_err("pg_temp");
    assert!(
        e.contains("schemaName cannot start with pg_ on PostgreSQL"),
        "{e}"
    );
    let key = |spec: &str| {
        format!("apiVersion: syncstore.dev/v1alpha1\nkind: ApiKey\nmetadata: {{name: k}}\nspec: {{userId: alice, {spec}}}\n")
    };
    let e = apply(&c, &key("storeRef: chat, secretName: Bad_Name")).expect_err("secretName");
    assert!(e.contains("secretName must be a Secret name"), "{e}");
    let e = apply(&c, &key("storeRef: Chat")).expect_err("storeRef");
    assert!(e.contains("storeRef must name a SyncStore"), "{e}");
    assert!(
        c.kubectl(&["get", "syncstores,apikeys", "-o", "name"])
            .trim()
            .is_empty(),
        "nothing was created"
    );
}

/// A key that repeats in a list the CRD does not key (`resources.claims`,
/// a Kubernetes type passed through) is found by the Deployment's dry run
/// before any child or the ConfigMap is applied: `SpecAccepted=False`,
/// `InvalidSpec`, in the apiserver's one line, not a `KubernetesError`
/// retried for minutes while `SpecAccepted` still said `Accepted`. A key
/// with a pattern that does not compile says why in one line. A refused
/// store deleted with `Delete` had nothing on the server, and its event
/// says so rather than `Dropped … and its role`.
#[test]
fn a_child_the_apiserver_cannot_type_is_an_invalid_spec_before_any_apply() {
    let c = with_operator("op-untyped", Engine::Postgres);
    apply(&c, &store("chat", Engine::Postgres, "")).expect("store");
    c.wait_condition("syncstore/chat", "Ready", 90);
    let before = c.must_get("configmap", "chat-config");
    apply(
        &c,
        &store(
            "chat",
            Engine::Postgres,
            "  jwt: {accessTokenLifetime: 1h}\n  resources: {claims: [{name: gpu}, {name: gpu}]}\n",
        ),
    )
    .expect("accepted: the CRD does not key resources.claims");
    let (status, _, message) = c.eventually("InvalidSpec", 60, || {
        let r = cond3(&c.get("syncstore", "chat")?, "SpecAccepted");
        (r.1 == "InvalidSpec").then_some(r)
    });
    assert_eq!(status, "False");
    assert_eq!(
        message,
        "invalid spec: the Kubernetes API refused Deployment chat: .spec.template.spec.containers[name=\"syncstore\"].resources.claims: duplicate entries for key [name=\"gpu\"]"
    );
    let s = c.must_get("syncstore", "chat");
    assert_eq!(s["status"]["phase"], "Failed");
    assert_eq!(ready(&s).1, "Serving", "the running pods still serve");
    let cm = c.must_get("configmap", "chat-config");
    assert_eq!(
        cm["data"], before["data"],
        "nothing is applied for a refused spec"
    );
    assert!(cm["data"].get("JWT_EXPIRES_IN").is_none());
    let events = c.kubectl(&["get", "events", "-o", "json"]);
    assert!(!events.contains("KubernetesError"), "{events}");

    // Fixed: accepted and applied.
    apply(
        &c,
        &store(
            "chat",
            Engine::Postgres,
            "  jwt: {accessTokenLifetime: 1h}\n",
        ),
    )
    .expect("fixed");
    c.eventually("Accepted again", 60, || {
        let s = c.get("syncstore", "chat")?;
        (cond3(&s, "SpecAccepted").1 == "Accepted").then_some(())
    });
    assert_eq!(
        c.must_get("configmap", "chat-config")["data"]["JWT_EXPIRES_IN"],
        "1h"
    );

    // A pattern that does not compile: one line naming the problem.
    apply(
        &c,
        "apiVersion: syncstore.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: ua}\nspec: {storeRef: chat, userId: alice, userAgentPatterns: ['(unclosed']}\n",
    )
    .expect("key");
    let (_, reason, message) = c.eventually("the key is refused", 60, || {
        let r = ready(&c.get("apikey", "ua")?);
        (r.1 == "InvalidSpec").then_some(r)
    });
    assert_eq!(reason, "InvalidSpec");
    assert_eq!(
        message,
        "invalid spec: invalid user-agent pattern '(unclosed': unclosed group"
    );

    // A store refused before provisioning, deleted with Delete.
    apply(
        &c,
        &store(
            "never",
            Engine::Postgres,
            "  jwt: {accessTokenLifetime: forever}\n",
        )
        .replace("key: url}", "key: url}, deletionPolicy: Delete"),
    )
    .expect("store");
    c.eventually("never is refused", 60, || {
        (ready(&c.get("syncstore", "never")?).1 == "InvalidSpec").then_some(())
    });
    c.kubectl(&[
        "delete",
        "syncstore",
        "never",
        "--wait=true",
        "--timeout=60s",
    ]);
    let notes: Vec<(String, String)> = c
        .events_of("never")
        .into_iter()
        .map(|(_, reason, message)| (reason, message))
        .collect();
    assert!(
        notes.iter().any(|(r, n)| r == "NothingToDrop"
            && n.starts_with("Dropped nothing: neither ss_")
            && n.ends_with("exists, so the store had no data on the database server.")),
        "{notes:?}"
    );
    assert!(
        !notes.iter().any(|(r, _)| r == "SchemaDropped"),
        "{notes:?}"
    );
}

/// `spec.database.ssl: true` (DB_SSL) holds for the operator too: the
/// store's URL requires TLS (on PostgreSQL, whose server offers it, the
/// store provisions and its `DATABASE_URL` says `sslmode=require`), and a
/// server without TLS (this MariaDB) is `DatabaseUnreachable` naming the
/// field, before any Deployment exists, instead of a `Ready` store whose
/// pods could never connect while the operator provisioned in clear.
#[test]
fn database_ssl_is_required_by_the_operator_as_by_the_pods() {
    let mut c = Cluster::new("op-ssl");
    c.secret("pg-admin", &[("url", &postgres_admin())]);
    c.secret("maria-admin", &[("url", &mysql_admin())]);
    c.start_operator("op-ssl");
    apply(
        &c,
        &store("pg", Engine::Postgres, "")
            .replace("db-admin, key: url}", "pg-admin, key: url}, ssl: true"),
    )
    .expect("pg");
    apply(
        &c,
        &store("maria", Engine::Mysql, "")
            .replace("db-admin, key: url}", "maria-admin, key: url}, ssl: true"),
    )
    .expect("maria");
    c.wait_condition("syncstore/pg", "Ready", 90);
    let url = c.secret_value("pg-db", "DATABASE_URL").expect("url");
    assert!(url.ends_with("?sslmode=require"), "TLS required");
    assert_eq!(
        c.must_get("configmap", "pg-config")["data"]["DB_SSL"],
        "true"
    );
    let (status, reason, message) = c.eventually("maria refused", 90, || {
        let r = cond3(&c.get("syncstore", "maria")?, "DatabaseReady");
        (r.1 == "DatabaseUnreachable").then_some(r)
    });
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DatabaseUnreachable")
    );
    assert!(
        message.contains("the TLS connection to the database server failed")
            && message.ends_with("spec.database.ssl is true, so the operator and the pods require TLS to this server: enable TLS on it or set spec.database.ssl to false"),
        "{message}"
    );
    assert!(c.get("deployment", "maria").is_none(), "nothing rolled out");
    // Turned off: it provisions.
    c.kubectl(&[
        "patch",
        "syncstore",
        "maria",
        "--type=merge",
        "-p",
        r#"{"spec":{"database":{"ssl":false}}}"#,
    ]);
    c.wait_condition("syncstore/maria", "Ready", 90);
}

/// The operator's key prefix (`--key-prefix`, the chart's
/// `operator.apiKeyPrefix`) reaches every store as `API_KEY_TOKEN_PREFIX`,
/// so the pods' log redaction recognises the keys the operator generates
/// (with the data plane's default `sk_live_`, a `pk_test_` key went
/// unmasked), and `spec.env` cannot set it apart.
#[test]
fn the_operators_key_prefix_reaches_the_stores() {
    let mut c = Cluster::new("op-prefix");
    c.secret("db-admin", &[("url", &postgres_admin())]);
    let kubeconfig = common::kubeconfig();
    c.start_operator_with(
        "op-prefix",
        &kubeconfig,
        &[("API_KEY_TOKEN_PREFIX", "pk_test_")],
    );
    let e = apply(
        &c,
        &store(
            "chat",
            Engine::Postgres,
            "  env: [{name: API_KEY_TOKEN_PREFIX, value: sk_live_}]\n",
        ),
    )
    .expect_err("env cannot set the prefix");
    assert!(
        e.contains("API_KEY_TOKEN_PREFIX: the operator manages them"),
        "{e}"
    );
    apply(&c, &store("chat", Engine::Postgres, "")).expect("store");
    apply(
        &c,
        "apiVersion: syncstore.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: k}\nspec: {storeRef: chat, userId: alice}\n",
    )
    .expect("key");
    c.wait_condition("apikey/k", "Ready", 90);
    assert_eq!(
        c.must_get("configmap", "chat-config")["data"]["API_KEY_TOKEN_PREFIX"],
        "pk_test_"
    );
    let key = c.secret_value("k-apikey", "apiKey").expect("key");
    assert!(key.starts_with("pk_test_"));
}
