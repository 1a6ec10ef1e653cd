//! `syncstore`: serve the API, migrate the database, manage API keys.

// The futures of the Redis watch (`redis_conn::Watched`), nested in the
// server's, prove `Send` only past the default depth of 128.
#![recursion_limit = "256"]

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use syncstore::{
    app,
    auth::{key_fields::KeyFields, policy::Authority, NewKey, Scope},
    config::{Config, RawConfig},
    error::ApiError,
    keys::{Created, Keys, Revoked},
    storage::{self, Db},
    sync::validate_user_id,
    telemetry::TraceSettings,
};

#[derive(Parser, Debug)]
#[command(
    name = "syncstore",
    version,
    about = "Real-time key/value sync service"
)]
struct Cli {
    #[command(flatten)]
    config: RawConfig,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once at startup; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Serve REST on PORT (the embedded SQLite store unless DATABASE_URL is set).
    Serve,
    /// Apply the database migrations and exit (a no-op when up to date).
    Migrate,
    /// Consume analytics events from Kafka into the aggregates (needs KAFKA_BROKERS).
    Analytics,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create(CreateArgs),
    /// Deactivate a key by id.
    Revoke {
        #[arg(long)]
        id: String,
    },
    /// List keys (one JSON object per line), of one user or all.
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Replace a key; the old one works for API_KEY_ROTATION_GRACE_SECONDS.
    Rotate {
        #[arg(long)]
        id: String,
    },
    /// Change a key's settings; lists replace the old ones, a quota of 0
    /// removes that quota.
    Update(UpdateArgs),
    /// Delete a key for good.
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// A name to recognise the key by.
    #[arg(long)]
    name: String,
    /// The user the key acts as.
    #[arg(long)]
    user: String,
    /// Grant only `read` (overrides --scopes).
    #[arg(long)]
    read_only: bool,
    /// Scopes, comma-separated (default API_KEY_DEFAULT_SCOPES).
    #[arg(long)]
    scopes: Option<String>,
    /// Lifetime in days (default API_KEY_EXPIRATION_DAYS; 0 = never).
    #[arg(long)]
    expires_in_days: Option<u32>,
    /// Allowed client IPs or CIDRs (repeat or comma-separate).
    #[arg(long = "ip", value_delimiter = ',')]
    ips: Vec<String>,
    /// Allowed ISO 3166 country codes.
    #[arg(long = "country", value_delimiter = ',')]
    countries: Vec<String>,
    /// Allowed Origin/Referer hosts; `*.example.com` for subdomains.
    #[arg(long = "domain", value_delimiter = ',')]
    domains: Vec<String>,
    /// Allowed User-Agent regexes (repeat the flag; not comma-separated).
    #[arg(long = "user-agent")]
    user_agents: Vec<String>,
    /// Requests allowed per minute (the seed's quotaPerMinute).
    #[arg(long)]
    quota_per_minute: Option<u32>,
    #[arg(long)]
    quota_per_hour: Option<u32>,
    #[arg(long)]
    quota_per_day: Option<u32>,
    #[arg(long)]
    quota_per_month: Option<u32>,
}

impl CreateArgs {
    /// The key these flags describe, checked as REST checks a POST body;
    /// `Err` is the flag at fault and why.
    fn new_key(self, config: &Config) -> Result<NewKey, (&'static str, String)> {
        validate_user_id(&self.user).map_err(|e| ("--user", e.to_string()))?;
        let scopes = match (self.read_only, self.scopes) {
            (true, _) => vec![Scope::Read],
            (false, Some(list)) => match Scope::parse_list(&list) {
                Ok(s) if !s.is_empty() => s,
                Ok(_) => return Err(("--scopes", "at least one scope is needed".into())),
                Err(e) => return Err(("--scopes", e.to_string())),
            },
            (false, None) => config.api_keys.default_scopes.clone(),
        };
        let days = self
            .expires_in_days
            .or(config.api_keys.expiration_days)
            .filter(|d| *d > 0);
        let new = NewKey {
            name: self.name,
            user_id: self.user,
            scopes,
            expires_at: days.map(|d| storage::now_ms() + i64::from(d) * 86_400_000),
            ip_restrictions: self.ips,
            country_restrictions: self.countries,
            domain_restrictions: self.domains,
            user_agent_patterns: self.user_agents,
            quotas: [
                self.quota_per_minute,
                self.quota_per_hour,
                self.quota_per_day,
                self.quota_per_month,
            ]
            .map(|q| q.map(i64::from)),
        };
        new.check_text().map_err(|e| ("key", e.to_string()))?;
        new.restrictions()
            .map_err(|e| ("restrictions", e.to_string()))?;
        Ok(new)
    }
}

#[derive(Args, Debug)]
struct UpdateArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    name: Option<String>,
    /// true or false.
    #[arg(long)]
    active: Option<bool>,
    #[arg(long = "ip", value_delimiter = ',')]
    ips: Option<Vec<String>>,
    #[arg(long = "country", value_delimiter = ',')]
    countries: Option<Vec<String>>,
    #[arg(long = "domain", value_delimiter = ',')]
    domains: Option<Vec<String>>,
    #[arg(long = "user-agent")]
    user_agents: Option<Vec<String>>,
    #[arg(long)]
    quota_per_minute: Option<u32>,
    #[arg(long)]
    quota_per_hour: Option<u32>,
    #[arg(long)]
    quota_per_day: Option<u32>,
    #[arg(long)]
    quota_per_month: Option<u32>,
}

impl UpdateArgs {
    /// The same change, in the same field names, as PATCH /api-keys/{id};
    /// a quota of 0 clears it.
    fn change(self) -> KeyFields {
        let quota = |q: Option<u32>| q.map(|q| (q > 0).then_some(i64::from(q)));
        KeyFields {
            name: self.name,
            is_active: self.active,
            ip_restrictions: self.ips,
            country_restrictions: self.countries,
            domain_restrictions: self.domains,
            user_agent_patterns: self.user_agents,
            quota_per_minute: quota(self.quota_per_minute),
            quota_per_hour: quota(self.quota_per_hour),
            quota_per_day: quota(self.quota_per_day),
            quota_per_month: quota(self.quota_per_month),
            ..KeyFields::default()
        }
    }
}

/// Records a key change made from the command line.
async fn cli_audit(db: &Db, action: &'static str, id: &str, details: Option<serde_json::Value>) {
    let entry = syncstore::audit::Entry {
        actor: "cli".into(),
        key_id: Some(id.to_string()),
        action,
        target: Some(id.to_string()),
        result: "ok".into(),
        details,
        ..Default::default()
    };
    if let Err(e) = storage::audit::record(db, &entry).await {
        eprintln!("warning: audit entry not written: {e}");
    }
}

/// A failure of a one-shot command, as one line on stderr and exit code 1.
fn fail(what: &str, err: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {what}: {err}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_raw(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Secrets that have no recognisable shape are masked by their value.
    let known = [
        config.bootstrap.as_ref().map(|b| b.api_key.expose()),
        config.jwt.secret.as_ref().map(|s| s.expose()),
        config.jwt.refresh_secret.as_ref().map(|s| s.expose()),
    ];
    let redactor = syncstore::telemetry::Redactor::new(
        &config.api_keys.token_prefix,
        known.into_iter().flatten().map(str::to_owned),
    );
    // Traces only from the long-running commands; a one-shot admin
    // command has nothing worth a trace.
    let service = match cli.command {
        Command::Serve => Some("syncstore"),
        Command::Analytics => Some("syncstore-analytics"),
        Command::Migrate | Command::Keys(_) => None,
    };
    let traces = service
        .map(|name| TraceSettings::from_env(name, &config.pod_name, |k| std::env::var(k).ok()))
        .transpose();
    let exporting = match traces.map(Option::flatten) {
        Ok(traces) => syncstore::telemetry::init(&config.log, redactor, traces.as_ref()),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let exporting = match exporting {
        Ok(exporting) => exporting,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let code = run(cli.command, config).await;
    // The last spans (the shutdown's own) leave before the runtime goes.
    if let Some(exporting) = exporting {
        exporting.shutdown().await;
    }
    code
}

/// Runs one command with the logging (and traces) in place.
async fn run(command: Command, config: Config) -> ExitCode {
    match command {
        Command::Serve => match app::serve(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("serve", e),
        },
        Command::Migrate => {
            let db = match Db::connect(&config.database, &config.data_dir).await {
                Ok(db) => db,
                Err(e) => return fail("migrate", e),
            };
            match db.migrate().await {
                Ok(n) => {
                    println!(
                        "applied {n} migration(s) to the {} database",
                        db.dialect().name()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail("migrate", e),
            }
        }
        Command::Keys(cmd) => keys(cmd, &config).await,
        Command::Analytics => match app::analytics(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("analytics", e),
        },
    }
}

/// The key service with the owner's authority: whoever runs the CLI holds
/// the database credentials.
fn key_service(db: &Db, config: &Config) -> Keys {
    Keys::new(
        db.clone(),
        syncstore::auth::KeyStore::new(db.clone()),
        config.api_keys.token_prefix.clone(),
        config.api_keys.rotation_grace,
    )
}

/// `syncstore keys …`: each subcommand goes through the key service, as
/// REST and the operator do, and records its change in the audit trail.
async fn keys(cmd: KeysCommand, config: &Config) -> ExitCode {
    let db = match Db::connect(&config.database, &config.data_dir).await {
        Ok(db) => db,
        Err(e) => return fail("keys", e),
    };
    if let Err(e) = db.migrate().await {
        return fail("keys", e);
    }
    let service = key_service(&db, config);
    match cmd {
        KeysCommand::Create(args) => create_key(&db, &service, args, config).await,
        KeysCommand::List { user } => match service.list(user.as_deref()).await {
            Ok(list) => {
                for key in list {
                    println!("{}", serde_json::to_string(&key).unwrap_or_default());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("keys list", e),
        },
        KeysCommand::Rotate { id } => match service.rotate(Authority::Owner, &id, None).await {
            Ok((created, old_expires)) => {
                cli_audit(&db, "api_key.rotate", &id, None).await;
                eprintln!(
                    "rotated {id} -> {}; the old key expires at {old_expires:?} (Unix ms)",
                    created.view.id
                );
                println!("{}", created.key);
                ExitCode::SUCCESS
            }
            Err(e) => fail("keys rotate", e),
        },
        KeysCommand::Update(args) => {
            let id = args.id.clone();
            match service
                .update(Authority::Owner, &id, None, args.change())
                .await
            {
                Ok(view) => {
                    cli_audit(&db, "api_key.update", &id, None).await;
                    println!("{}", serde_json::to_string(&view).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("keys update", e),
            }
        }
        KeysCommand::Delete { id } => match service.delete(&id, None).await {
            Ok(_) => {
                cli_audit(&db, "api_key.delete", &id, None).await;
                eprintln!("deleted key {id}");
                ExitCode::SUCCESS
            }
            Err(ApiError::NotFound { .. }) => fail("keys delete", format!("no key with id {id}")),
            Err(e) => fail("keys delete", e),
        },
        KeysCommand::Revoke { id } => match service.revoke(&id).await {
            Ok(Revoked::NoSuchKey) => fail("keys revoke", format!("no key with id {id}")),
            Ok(Revoked::Now | Revoked::Already) => {
                cli_audit(&db, "api_key.revoke", &id, None).await;
                eprintln!("revoked key {id}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("keys revoke", e),
        },
    }
}

/// `syncstore keys create`: prints the key itself on stdout (the only time
/// it is shown) and what was made on stderr.
async fn create_key(db: &Db, service: &Keys, args: CreateArgs, config: &Config) -> ExitCode {
    let new = match args.new_key(config) {
        Ok(new) => new,
        Err((what, e)) => return fail(what, e),
    };
    match service
        .create(Authority::Owner, &new, KeyFields::default())
        .await
    {
        Ok(Created { view: record, key }) => {
            let details = serde_json::json!({ "name": new.name, "userId": new.user_id });
            cli_audit(db, "api_key.create", &record.id, Some(details)).await;
            let scopes: Vec<&str> = record.scopes.iter().map(|s| s.as_str()).collect();
            eprintln!(
                "created key {} for user {} with scopes [{}]",
                record.id,
                record.user_id,
                scopes.join(", ")
            );
            println!("{key}");
            ExitCode::SUCCESS
        }
        Err(e) => fail("keys create", e),
    }
}
