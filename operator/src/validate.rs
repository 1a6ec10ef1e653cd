//! Checks a store's spec the way its pods will read it, before anything is
//! rolled out: the environment the children give the data plane is parsed
//! by the data plane's own configuration parser, so a value the pods would
//! exit on becomes `Ready=False`, reason `InvalidSpec`, instead of a crash
//! loop behind a `Ready=True` store. And the image is compared with the
//! schema the operator migrated, for `VersionSkew`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use semver::Version;
use syncstore::config::{Config, RawConfig};
use syncstore_crds::{Engine, SyncStore};

use crate::{
    apply::secret_value,
    children,
    conditions::Verdict,
    context::{Error, Result},
};

/// The variables a data-plane pod of `store` starts with, as far as the
/// operator knows them: the ConfigMap, the generated secrets, a stand-in
/// database URL (the real one is derived from the admin URL later and is
/// always well-formed), the pod name's shape, Redis, and the literal values
/// of `spec.env` last, as the container applies them. `valueFrom` entries
/// are resolved only on the node, so their values are not checked.
pub fn data_plane_env(
    store: &SyncStore,
    config: &ConfigMap,
    generated: &Secret,
    redis_url: Option<&str>,
) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = config.data.clone().unwrap_or_default();
    for key in ["JWT_SECRET", "JWT_REFRESH_SECRET", "DB_PASSWORD"] {
        if let Some(v) = secret_value(generated, key) {
            vars.insert(key.into(), v);
        }
    }
    let scheme = match store.spec.database.engine {
        Engine::Postgres => "postgres",
        Engine::Mysql => "mysql",
    };
    vars.insert("DATABASE_URL".into(), format!("{scheme}://checked-later"));
    // A Deployment's pods are named `<deployment>-<hash>-<suffix>`.
    vars.insert(
        "POD_NAME".into(),
        format!("{}-5d8f7c9b4-x2x2x", children::names(store).deployment),
    );
    // The CA file is checked against the URL only when the URL is known
    // (a missing Redis Secret is the pods' to report).
    if let Some(url) = redis_url {
        vars.insert("REDIS_URL".into(), url.into());
        if children::redis_ca(store).is_some() {
            vars.insert("REDIS_TLS_CA_FILE".into(), children::REDIS_CA_FILE.into());
        }
    }
    // A secret read from a Secret on the node (`valueFrom`) is there for
    // the parser as a stand-in, so that the rules about its presence hold
    // (REDIS_SENTINEL_USERNAME needs REDIS_SENTINEL_PASSWORD); its value
    // is the node's to check.
    let secrets = secret_vars();
    for e in &store.spec.env {
        match (&e.value, &e.value_from) {
            (Some(v), _) => {
                vars.insert(e.name.clone(), v.clone());
            }
            (None, Some(_)) if secrets.contains(&e.name) => {
                vars.insert(e.name.clone(), "x".repeat(64));
            }
            _ => {}
        }
    }
    vars
}

/// Parses `vars` with the data plane's parser and returns the
/// configuration the pods would run with. The message names the variable
/// and the problem in one line, never a secret's value (the parser's
/// messages do not echo secrets).
pub fn check(store: &SyncStore, mut vars: BTreeMap<String, String>) -> Result<Config> {
    check_name(store)?;
    check_env_names(store)?;
    check_quantities(store)?;
    check_redis_ca(store)?;
    // The GeoIP file lives on a pod volume the operator cannot open; what
    // it can check is that the path is on one of the mounted volumes.
    if let Some(path) = vars.remove("GEOIP_DB_PATH") {
        check_mounted(store, &path)?;
    }
    let raw = RawConfig::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| Error::InvalidSpec(first_line(&e)))?;
    Config::from_raw(&raw).map_err(|e| {
        let field = source_of(store, e.var);
        let value = vars
            .get(e.var)
            .and_then(|v| shown(e.var, v))
            .map_or_else(String::new, |v| format!("='{v}'"));
        Error::InvalidSpec(format!(
            "the data plane would refuse {}{value} from {field} ({}), so nothing is rolled out until {field} is fixed",
            e.var, e.problem
        ))
    })
}

/// Where in the spec the variable `var` comes from, for a message that
/// tells what to fix: a `spec.env` entry wins, as it does in the
/// container.
fn source_of(store: &SyncStore, var: &str) -> String {
    if store.spec.env.iter().any(|e| e.name == var) {
        return format!("the spec.env entry {var}");
    }
    let field = match var {
        "CORS_ORIGIN" => "spec.corsOrigins",
        "TRUSTED_PROXIES" => "spec.trustedProxies",
        "JWT_EXPIRES_IN" => "spec.jwt.accessTokenLifetime",
        "JWT_REFRESH_EXPIRES_IN" => "spec.jwt.refreshTokenLifetime",
        "GEOIP_DB_PATH" => "spec.geoip.databasePath",
        "GEOIP_COUNTRY_HEADER" => "spec.geoip.countryHeader",
        "DB_CONNECTION_LIMIT" => "spec.database.connectionLimit",
        "DB_SSL" => "spec.database.ssl",
        "KAFKA_BROKERS" => "spec.kafka.brokers",
        "KAFKA_TOPIC" => "spec.kafka.topic",
        "ENABLE_ANALYTICS" => "spec.analytics.enabled",
        "CONFLICT_DEFAULT_STRATEGY" => "spec.conflicts.defaultStrategy",
        "CONFLICT_RESOLVER_URL" => "spec.conflicts.resolverUrl",
        "MAX_ITEM_SIZE_KB" => "spec.limits.maxItemSizeKb",
        "MAX_STORAGE_PER_USER_MB" => "spec.limits.maxStoragePerUserMb",
        "TTL_CLEANUP_INTERVAL_HOURS" => "spec.limits.ttlCleanupIntervalHours",
        "SYNC_TOMBSTONE_RETENTION_DAYS" => "spec.limits.tombstoneRetentionDays",
        "RATE_LIMIT_WINDOW_MS" => "spec.rateLimit.windowMs",
        "RATE_LIMIT_MAX_REQUESTS" => "spec.rateLimit.maxRequests",
        "REDIS_TLS_CA_FILE" => "spec.redis.tls",
        "REDIS_URL" => {
            return match &store.spec.redis {
                Some(r) => format!(
                    "the Redis URL in Secret {} (key {})",
                    r.url_secret_ref.name, r.url_secret_ref.key
                ),
                None => "spec.redis".into(),
            }
        }
        _ => return format!("the environment the operator renders for {var}"),
    };
    field.into()
}

/// The store's name names its Service and labels its pods, so it must be
/// a DNS-1035 label of at most 63 characters. The CRD refuses others at
/// apply; this catches a store created under a CRD without that rule,
/// before any schema is made for a store whose children cannot exist.
fn check_name(store: &SyncStore) -> Result<()> {
    let name = store.name_any();
    if syncstore_crds::is_store_name(&name) {
        return Ok(());
    }
    Err(Error::InvalidSpec(format!(
        "the name {name} cannot name the store's Service nor label its pods: a SyncStore's name must be at most 63 lower-case letters, digits and '-', start with a letter and end with a letter or digit, so nothing is provisioned; create the store under such a name"
    )))
}

/// `spec.env` names the CRD refuses at apply (operator-managed ones and
/// the bootstrap key), checked again for a CRD installed without the rule.
fn check_env_names(store: &SyncStore) -> Result<()> {
    let refused = store.spec.env.iter().map(|e| e.name.as_str()).find(|n| {
        syncstore_crds::MANAGED_ENV.contains(n) || syncstore_crds::BOOTSTRAP_ENV.contains(n)
    });
    match refused {
        None => Ok(()),
        Some(name) if syncstore_crds::BOOTSTRAP_ENV.contains(&name) => Err(Error::InvalidSpec(format!(
            "the spec.env entry {name} is refused: a store's API keys are ApiKeys, which the operator revokes when they are deleted, so nothing is rolled out until the entry is removed"
        ))),
        Some(name) => Err(Error::InvalidSpec(format!(
            "the spec.env entry {name} is refused: the operator manages {name}, so nothing is rolled out until the entry is removed"
        ))),
    }
}

/// The variables whose values are secret: those the data plane's own
/// configuration hides (`hide_env_values` on its clap arguments: the
/// database and Redis URLs, the JWT secrets, the bootstrap key, and any it
/// adds later), and the operator's generated `DB_PASSWORD`.
fn secret_vars() -> Vec<String> {
    use clap::Args;
    let command = RawConfig::augment_args(clap::Command::new("syncstore"));
    command
        .get_arguments()
        .filter(|a| a.is_hide_env_values_set())
        .filter_map(|a| a.get_env().and_then(|e| e.to_str()).map(str::to_owned))
        .chain(["DB_PASSWORD".to_string()])
        .collect()
}

/// A variable's value as a message may show it: never a secret's (see
/// [`secret_vars`]) nor a URL with a user or password in it, and at most
/// 80 characters.
fn shown(var: &str, value: &str) -> Option<String> {
    let userinfo = value
        .split_once("://")
        .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or_default().contains('@'));
    if userinfo || secret_vars().iter().any(|s| s == var) {
        return None;
    }
    let mut v: String = value.chars().take(80).collect();
    if v.len() < value.len() {
        v.push('…');
    }
    Some(v)
}

/// Every `resources` value must be a quantity. The CRD checks cpu, memory
/// and ephemeral-storage at apply time (a rule over every key costs the
/// apiserver too much); this catches the rest (`example.com/gpu: lots`),
/// which the apiserver would otherwise refuse only when the Deployment is
/// applied, after the database work.
fn check_quantities(store: &SyncStore) -> Result<()> {
    let Some(r) = &store.spec.resources else {
        return Ok(());
    };
    for (field, map) in [("limits", &r.limits), ("requests", &r.requests)] {
        for (name, q) in map.iter().flatten() {
            if !is_quantity(&q.0) {
                return Err(Error::InvalidSpec(format!(
                    "resources.{field} {name} is '{}', not a quantity such as 500m, 2 or 256Mi; nothing is rolled out until the spec is fixed",
                    q.0
                )));
            }
        }
    }
    Ok(())
}

/// Kubernetes' quantity grammar: a decimal number, then a binary suffix
/// (Ki … Ei), a decimal one (n, u, m, "", k, M … E) or an exponent (e3).
fn is_quantity(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return false;
    }
    let exponent = suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    exponent
        || matches!(
            suffix,
            "" | "n"
                | "u"
                | "m"
                | "k"
                | "M"
                | "G"
                | "T"
                | "P"
                | "E"
                | "Ki"
                | "Mi"
                | "Gi"
                | "Ti"
                | "Pi"
                | "Ei"
        )
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// While `spec.redis.tls` is set the operator adds a volume and a mount for
/// the CA and sets REDIS_TLS_CA_FILE: a pod-template volume of the same
/// name would make the Deployment invalid, a mount at, above or inside its
/// path would hide the CA or keep its mount point from being made (a
/// read-only volume above it), and a REDIS_TLS_CA_FILE of `spec.env` would
/// point elsewhere than the CA the operator checked.
fn check_redis_ca(store: &SyncStore) -> Result<()> {
    let Some((volume, mount)) = children::redis_ca(store) else {
        return Ok(());
    };
    let t = &store.spec.pod_template;
    let ours = path_parts(&mount.mount_path);
    let overlaps = |path: &str| {
        let theirs = path_parts(path);
        theirs.starts_with(&ours) || ours.starts_with(&theirs)
    };
    let taken = t.volumes.iter().any(|v| v.name == volume.name)
        || t.volume_mounts
            .iter()
            .any(|m| m.name == mount.name || overlaps(&m.mount_path));
    if taken {
        return Err(Error::InvalidSpec(format!(
            "podTemplate uses the volume name {} or mounts a volume at, above or inside {}, which the operator uses for spec.redis.tls, so nothing is rolled out until that volume is renamed or moved",
            volume.name, mount.mount_path
        )));
    }
    if store.spec.env.iter().any(|e| e.name == "REDIS_TLS_CA_FILE") {
        return Err(Error::InvalidSpec(
            "the spec.env entry REDIS_TLS_CA_FILE is refused beside spec.redis.tls, which sets it to the CA the operator mounts and checks, so nothing is rolled out until one of them is removed".into(),
        ));
    }
    Ok(())
}

/// An absolute path's components, without empty and `.` ones, so that
/// `/a//b/./` and `/a/b` compare equal.
fn path_parts(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect()
}

/// GEOIP_DB_PATH must be an absolute path inside a mount of
/// `podTemplate.volumeMounts`: the root filesystem is read-only and holds
/// no database.
fn check_mounted(store: &SyncStore, path: &str) -> Result<()> {
    let mounted = store.spec.pod_template.volume_mounts.iter().any(|m| {
        let dir = m.mount_path.trim_end_matches('/');
        path.strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
    });
    if mounted {
        Ok(())
    } else {
        Err(Error::InvalidSpec(format!(
            "the GeoIP database path {path} is not inside any of podTemplate.volumeMounts, so the pods would not find it"
        )))
    }
}

/// The version an image tag names, such as `…/syncstore:0.1.0`,
/// `v0.1.0-rc.1` or `0.1.0+build.7`, parsed as semantic versioning; None
/// for `latest`, a digest, or anything else that names no version.
pub fn tag_version(image: &str) -> Option<Version> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// The operator's own version: the release whose migrations it applies.
pub fn operator_version() -> Version {
    // Cargo only accepts semantic versions for a package.
    Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or_else(|_| Version::new(0, 0, 0))
}

/// Condition `VersionSkew`: True when the store's image precedes the
/// operator that migrated its schema to `schema_version`, by semantic
/// versioning's precedence, so a pre-release (`0.1.0-rc.1`) precedes its
/// release (`0.1.0`): it may lack migrations that came later in the
/// release cycle. Such a binary may find migrations it does not know; the
/// data plane then keeps `/ready` at 503 (`VersionSkew`) rather than
/// serving on a schema it does not understand. False with reason
/// `ImageVersionUnknown` for a tag that names no version (`latest`, a
/// digest): the operator cannot tell.
pub fn version_skew(store: &SyncStore, schema_version: i64) -> Verdict {
    let image = children::image(store);
    let ours = operator_version();
    // The condition reads True when something is wrong, like the
    // upstream `…Pressure` node conditions.
    match tag_version(&image) {
        Some(v) if v.cmp_precedence(&ours).is_lt() => {
            let what = if v.pre.is_empty() {
                format!("release {v}, older than {ours}")
            } else {
                format!("pre-release {v}, which precedes release {ours}")
            };
            Verdict::ok(
                "VersionSkew",
                "ImageOlderThanSchema",
                format!(
                    "Image {image} is {what} whose migrations schema version {schema_version} came from, so it may not know all of them; upgrade the image of SyncStore {} to {ours} or later.",
                    store.name_any(),
                ),
            )
        }
        Some(v) => Verdict::fail(
            "VersionSkew",
            "ImageMatchesSchema",
            format!("Image version {v} is not older than {ours}, so it knows every migration of schema version {schema_version}."),
        ),
        None => Verdict::fail(
            "VersionSkew",
            "ImageVersionUnknown",
            format!("Image {image} names no release version, so its schema support cannot be compared."),
        ),
    }
}

/// Condition `VersionSkew` when the schema's version is not known because
/// `err` stopped provisioning or migrating: whether the image matches the
/// schema cannot be told, so the condition must not go on saying it does.
pub fn version_skew_unknown(store: &SyncStore, err: &Error) -> Verdict {
    let why = match err {
        Error::Migration(_) => "migrating the schema failed",
        Error::DatabaseUnreachable(_) => "the database cannot be reached",
        Error::SecretMissing { .. } | Error::InvalidDatabaseUrl(_) => {
            "the admin database URL cannot be read"
        }
        Error::SchemaOwnedByAnother(_) | Error::ImmutableFieldChanged(_) => {
            "the store's schema was refused"
        }
        Error::KeyStore(_) => "revoking the rows of deleted ApiKeys failed",
        _ => "provisioning the database failed",
    };
    Verdict::unknown(
        "VersionSkew",
        "SchemaVersionUnknown",
        format!(
            "The schema's version is unknown because {why}, so whether image {} knows every migration cannot be told.",
            children::image(store)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncstore_crds::SyncStoreSpec;

    fn store(yaml: &str) -> SyncStore {
        let spec: SyncStoreSpec = serde_yaml::from_str(yaml).expect("spec parses");
        let mut s = SyncStore::new("chat", spec);
        s.metadata.namespace = Some("team-a".into());
        s
    }

    const BASE: &str = "database: {engine: postgres, adminSecretRef: {name: pg-admin}}\n";

    fn generated() -> Secret {
        let mut n = 0;
        children::generated_secret(&store(BASE), &mut || {
            n += 1;
            format!("{n}{}", "x".repeat(47))
        })
    }

    fn check_yaml(extra: &str) -> Result<()> {
        let s = store(&format!("{BASE}{extra}"));
        let vars = data_plane_env(
            &s,
            &children::config_map(&s, "sk_live_"),
            &generated(),
            None,
        );
        check(&s, vars).map(drop)
    }

    fn message<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::InvalidSpec(m)) => m,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_spec_passes_the_data_planes_parser() {
        check_yaml("").expect("defaults");
        let s = store("database: {engine: mysql, adminSecretRef: {name: a}, ssl: true}\ncorsOrigins: [https://app.example.com]\ntrustedProxies: [10.0.0.0/8]\njwt: {accessTokenLifetime: 1h}\nenv: [{name: LOG_LEVEL, value: debug}]\n");
        let vars = data_plane_env(
            &s,
            &children::config_map(&s, "sk_live_"),
            &generated(),
            Some("redis://redis:6379"),
        );
        assert_eq!(vars["DB_SSL"], "true");
        assert_eq!(vars["LOG_LEVEL"], "debug");
        check(&s, vars).expect("full");
    }

    #[test]
    fn cluster_and_sentinel_urls_pass_and_bad_ones_are_refused_without_the_password() {
        let s = store(&format!(
            "{BASE}redis: {{urlSecretRef: {{name: r, key: url}}}}\n"
        ));
        let env = |url: &str| {
            data_plane_env(
                &s,
                &children::config_map(&s, "sk_live_"),
                &generated(),
                Some(url),
            )
        };
        let config =
            check(&s, env("redis+cluster://app:pw@r-0.r:6379,r-1.r:6379")).expect("cluster form");
        assert!(config.redis.as_ref().is_some_and(|r| r.is_cluster()));
        let m = message(check(
            &s,
            env("redis+cluster://app:hunter2@r-0.r:6379,r-1.r"),
        ));
        assert!(
            m.contains("REDIS_URL") && m.contains("the Redis URL in Secret r (key url)"),
            "{m}"
        );
        assert!(m.contains("node \"r-1.r\" must be host:port"), "{m}");
        assert!(!m.contains("hunter2"), "{m}");
        // Sentinel: the master's name after the sentinels.
        let config = check(
            &s,
            env("redis+sentinel://:pw@s-0.s:26379,s-1.s:26379/mymaster"),
        )
        .expect("sentinel form");
        assert!(
            matches!(
                config.redis,
                Some(syncstore::redis_conn::Target::Sentinel { .. })
            ),
            "{:?}",
            config.redis
        );
        let m = message(check(&s, env("redis+sentinel://:hunter2@s-0.s:26379")));
        assert!(m.contains("ends with the master's name"), "{m}");
        assert!(!m.contains("hunter2"), "{m}");
    }

    #[test]
    fn a_redis_ca_needs_a_tls_url_and_its_own_volume_name_and_path() {
        let tls = "redis: {urlSecretRef: {name: r}, tls: {caSecretRef: {name: ca}}}\n";
        let s = store(&format!("{BASE}{tls}"));
        let env = |s: &SyncStore, url: &str| {
            data_plane_env(
                s,
                &children::config_map(s, "sk_live_"),
                &generated(),
                Some(url),
            )
        };
        let config = check(&s, env(&s, "rediss://:pw@r:6380")).expect("TLS URL");
        assert_eq!(
            config.redis_tls_ca_file.as_deref(),
            Some(std::path::Path::new(children::REDIS_CA_FILE))
        );
        check(&s, env(&s, "rediss+cluster://r-0.r:6379,r-1.r:6379")).expect("TLS cluster");
        let m = message(check(&s, env(&s, "redis://:hunter2@r:6379")));
        assert_eq!(
            m,
            "the data plane would refuse REDIS_TLS_CA_FILE='/etc/syncstore/redis-tls/ca.crt' from spec.redis.tls (is set, but REDIS_URL does not use TLS (rediss://, rediss+cluster:// or rediss+sentinel://)), so nothing is rolled out until spec.redis.tls is fixed"
        );
        // The URL's Secret missing: the pods report it, not this check.
        let vars = data_plane_env(
            &s,
            &children::config_map(&s, "sk_live_"),
            &generated(),
            None,
        );
        check(&s, vars).expect("no URL to compare with");
        let mount = |path: &str| {
            format!("podTemplate: {{volumes: [{{name: x, emptyDir: {{}}}}], volumeMounts: [{{name: x, mountPath: {path}}}]}}\n")
        };
        for template in [
            "podTemplate: {volumes: [{name: syncstore-redis-tls, emptyDir: {}}]}\n".to_string(),
            mount("/etc/syncstore/redis-tls/"),
            mount("//etc/syncstore/./redis-tls"),
            mount("/etc/syncstore"),
            mount("/etc/syncstore/redis-tls/ca.crt"),
        ] {
            let s = store(&format!("{BASE}{tls}{template}"));
            let m = message(check(&s, env(&s, "rediss://r:6380")));
            assert!(
                m.contains("which the operator uses for spec.redis.tls"),
                "{template}: {m}"
            );
        }
        // Beside it, not below or above: fine.
        let s = store(&format!("{BASE}{tls}{}", mount("/etc/syncstore-geo")));
        check(&s, env(&s, "rediss://r:6380")).expect("a sibling path");
        let s = store(&format!(
            "{BASE}{tls}env: [{{name: REDIS_TLS_CA_FILE, value: /x.pem}}]\n"
        ));
        let m = message(check(&s, env(&s, "rediss://r:6380")));
        assert!(
            m.contains("REDIS_TLS_CA_FILE is refused beside spec.redis.tls"),
            "{m}"
        );
        // Without spec.redis.tls a store still sets it itself (a CA on a
        // volume of its own), as before the field existed.
        let own = format!("{BASE}redis: {{urlSecretRef: {{name: r}}}}\nenv: [{{name: REDIS_TLS_CA_FILE, value: /ca/ca.pem}}]\n");
        let s = store(&own);
        check(&s, env(&s, "rediss://r:6380")).expect("its own CA file");
        // A sentinel password from a Secret counts as present: a literal
        // user name beside it passes, and a Sentinel-less URL is refused.
        let sentinel = format!("{BASE}redis: {{urlSecretRef: {{name: r}}}}\nenv: [{{name: REDIS_SENTINEL_USERNAME, value: watcher}}, {{name: REDIS_SENTINEL_PASSWORD, valueFrom: {{secretKeyRef: {{name: s, key: p}}}}}}]\n");
        let s = store(&sentinel);
        check(&s, env(&s, "redis+sentinel://s1:26379/m")).expect("password from a Secret");
        let m = message(check(&s, env(&s, "redis://r:6379")));
        assert!(
            m.contains("REDIS_SENTINEL_PASSWORD") && !m.contains("xxxx"),
            "{m}"
        );
    }

    #[test]
    fn what_the_pods_would_refuse_is_an_invalid_spec_naming_the_variable() {
        let m = message(check_yaml("corsOrigins: [app.example.com]\n"));
        assert_eq!(
            m,
            "the data plane would refuse CORS_ORIGIN='app.example.com' from spec.corsOrigins (invalid origin 'app.example.com': the scheme must be http:// or https://; expected * or http(s)://host[:port], comma-separated), so nothing is rolled out until spec.corsOrigins is fixed"
        );
        // An origin no browser sends would never match: refused, not kept.
        let m = message(check_yaml("corsOrigins: ['https://*.example.com']\n"));
        assert!(
            m.contains("(invalid origin 'https://*.example.com': wildcards are not supported, list each origin;"),
            "{m}"
        );
        assert!(!m.contains('\n'));
        // `*` (what an empty corsOrigins renders) with credentials from env.
        let m = message(check_yaml(
            "corsOrigins: ['*']\nenv: [{name: CORS_CREDENTIALS, value: 'true'}]\n",
        ));
        assert_eq!(
            m,
            "the data plane would refuse CORS_ORIGIN='*' from spec.corsOrigins ('*' cannot be combined with CORS_CREDENTIALS=true: list the allowed origins), so nothing is rolled out until spec.corsOrigins is fixed"
        );
        let m = message(check_yaml("conflicts: {resolverUrl: 'ftp://resolver'}\n"));
        assert!(
            m.starts_with("the data plane would refuse CONFLICT_RESOLVER_URL='ftp://resolver' from spec.conflicts.resolverUrl (must be a URL starting with http://, https://)"),
            "{m}"
        );
        // A URL with credentials is not repeated.
        let m = message(check_yaml(
            "conflicts: {resolverUrl: 'ftp://user:pw@resolver'}\n",
        ));
        assert!(
            !m.contains("pw@")
                && m.contains("CONFLICT_RESOLVER_URL from spec.conflicts.resolverUrl"),
            "{m}"
        );
        let m = message(check_yaml("jwt: {accessTokenLifetime: forever}\n"));
        assert!(m.contains("JWT_EXPIRES_IN"), "{m}");
        let m = message(check_yaml("trustedProxies: [ingress-nginx]\n"));
        assert!(m.contains("TRUSTED_PROXIES"), "{m}");
        let m = message(check_yaml("env: [{name: LOG_FORMAT, value: xml}]\n"));
        assert!(
            m.starts_with(
                "the data plane would refuse LOG_FORMAT='xml' from the spec.env entry LOG_FORMAT ("
            ),
            "{m}"
        );
        // No secret value reaches the message.
        assert!(!m.contains(&"x".repeat(47)));
    }

    /// The data plane's own list of secrets decides what is never shown,
    /// the bootstrap key included; and the operator refuses the names the
    /// CRD refuses, for a CRD without the rule.
    #[test]
    fn secret_values_are_the_data_planes_secrets_and_never_shown() {
        let secrets = secret_vars();
        for v in [
            "DATABASE_URL",
            "REDIS_URL",
            "JWT_SECRET",
            "JWT_REFRESH_SECRET",
            "BOOTSTRAP_API_KEY",
            "DB_PASSWORD",
        ] {
            assert!(secrets.iter().any(|s| s == v), "{v} in {secrets:?}");
            assert_eq!(shown(v, "sk_live_short"), None, "{v}");
        }
        assert_eq!(shown("LOG_FORMAT", "xml").as_deref(), Some("xml"));
        let m = message(check_yaml(
            "env: [{name: BOOTSTRAP_API_KEY, value: sk_live_hunter2}]
",
        ));
        assert!(!m.contains("hunter2"), "{m}");
        assert_eq!(
            m,
            "the spec.env entry BOOTSTRAP_API_KEY is refused: a store's API keys are ApiKeys, which the operator revokes when they are deleted, so nothing is rolled out until the entry is removed"
        );
        let m = message(check_yaml(
            "env: [{name: DATABASE_URL, value: 'postgres://x'}]
",
        ));
        assert!(
            m.starts_with("the spec.env entry DATABASE_URL is refused"),
            "{m}"
        );
    }

    #[test]
    fn a_store_name_that_cannot_name_a_service_is_refused() {
        for name in ["my.store", "1chat"] {
            let mut s = store(BASE);
            s.metadata.name = Some(name.into());
            let vars = data_plane_env(
                &s,
                &children::config_map(&s, "sk_live_"),
                &generated(),
                None,
            );
            let m = message(check(&s, vars));
            assert!(
                m.starts_with(&format!("the name {name} cannot name the store's Service")),
                "{m}"
            );
        }
    }

    #[test]
    fn the_geoip_database_must_be_on_a_mounted_volume() {
        let m = message(check_yaml("geoip: {databasePath: /geo/country.mmdb}\n"));
        assert!(m.contains("/geo/country.mmdb"), "{m}");
        check_yaml("geoip: {databasePath: /geo/country.mmdb}\npodTemplate: {volumeMounts: [{name: geo, mountPath: /geo}]}\n")
            .expect("mounted");
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for ok in [
            "500m", "2", "0.5", "256Mi", "1Gi", "1e3", "1.5E-2", "+1k", "100n",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["lots", "", "Mi", "1.2.3", "1 Gi", "1gi", "1e", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let m = message(check_yaml("resources: {limits: {example.com/gpu: lots}}\n"));
        assert!(
            m.starts_with("resources.limits example.com/gpu is 'lots'"),
            "{m}"
        );
    }

    #[test]
    fn image_tags_compare_as_releases() {
        let v = |t: &str| tag_version(t).map(|v| v.to_string());
        assert_eq!(
            v("ghcr.io/syncstore/syncstore:0.1.0").as_deref(),
            Some("0.1.0")
        );
        assert_eq!(
            v("registry:5000/syncstore:v1.2.3-rc.1").as_deref(),
            Some("1.2.3-rc.1")
        );
        assert_eq!(
            v("syncstore:0.1.0+build.7").as_deref(),
            Some("0.1.0+build.7")
        );
        assert_eq!(tag_version("registry:5000/syncstore"), None);
        assert_eq!(tag_version("syncstore:latest"), None);
        assert_eq!(tag_version("syncstore:0.1"), None);
        assert_eq!(tag_version("syncstore@sha256:abc"), None);
        assert_eq!(
            tag_version("syncstore:0.1.0@sha256:abc").map(|v| v.minor),
            Some(1)
        );
        let old = store(&format!("image: syncstore:0.0.9\n{BASE}"));
        let v = version_skew(&old, 12);
        assert!(v.is_true() && v.reason == "ImageOlderThanSchema", "{v:?}");
        let current = store(BASE);
        let v = version_skew(&current, 12);
        assert!(!v.is_true() && v.reason == "ImageMatchesSchema", "{v:?}");
        let latest = store(&format!("image: syncstore:latest\n{BASE}"));
        assert_eq!(version_skew(&latest, 12).reason, "ImageVersionUnknown");
        let digest = store(&format!("image: syncstore@sha256:abc\n{BASE}"));
        assert_eq!(version_skew(&digest, 12).reason, "ImageVersionUnknown");
    }

    /// A pre-release precedes its release (semantic versioning's
    /// precedence): `0.1.0-rc.1` may lack migrations of `0.1.0`.
    #[test]
    fn a_pre_release_precedes_its_release() {
        let ours = operator_version();
        assert!(ours.pre.is_empty(), "the operator is a release: {ours}");
        let rc = format!("{}.{}.{}-rc.1", ours.major, ours.minor, ours.patch);
        let s = store(&format!("image: ghcr.io/syncstore/syncstore:{rc}\n{BASE}"));
        let v = version_skew(&s, 12);
        assert_eq!(
            (v.status, v.reason.as_str(), v.message.as_str()),
            (
                crate::conditions::Status::True,
                "ImageOlderThanSchema",
                format!(
                    "Image ghcr.io/syncstore/syncstore:{rc} is pre-release {rc}, which precedes release {ours} whose migrations schema version 12 came from, so it may not know all of them; upgrade the image of SyncStore chat to {ours} or later."
                )
                .as_str()
            )
        );
        // Build metadata does not count; a later pre-release is not older.
        let build = store(&format!("image: syncstore:{ours}+build.7\n{BASE}"));
        assert_eq!(version_skew(&build, 12).reason, "ImageMatchesSchema");
        let next = format!("{}.{}.{}-rc.1", ours.major, ours.minor + 1, 0);
        let next = store(&format!("image: syncstore:{next}\n{BASE}"));
        assert_eq!(version_skew(&next, 12).reason, "ImageMatchesSchema");
        // And a pre-release of an older release is older still.
        assert!(tag_version("x:0.0.1-rc.1")
            .expect("version")
            .cmp_precedence(&tag_version("x:0.0.1").expect("version"))
            .is_lt());
    }

    #[test]
    fn the_version_skew_is_unknown_when_the_schema_version_is() {
        let s = store(BASE);
        let v = version_skew_unknown(&s, &Error::Migration("relation x exists".into()));
        assert_eq!(v.status, crate::conditions::Status::Unknown);
        assert_eq!(v.reason, "SchemaVersionUnknown");
        assert!(
            v.message.starts_with("The schema's version is unknown because migrating the schema failed, so whether image ghcr.io/syncstore/syncstore:"),
            "{}",
            v.message
        );
    }
}
