//! Command line: `serve`, `demo`, `mock`, `keys`, `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, LogFormat, Settings};
use crate::store::Store;

#[derive(Parser)]
#[command(
    name = "glmgate",
    version,
    about = "LLM API gateway for Z.AI's GLM models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML config file (every option has a default; see docs/configuration.md).
        #[arg(long, env = "GLMGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the gateway in front of the built-in mock upstream, with a fresh client key.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// SQLite file for the demo (created if missing).
        #[arg(long, default_value = "glmgate-demo.db")]
        db: PathBuf,
        /// Delay between streamed chunks of the mock, so streaming is visible.
        #[arg(long, default_value_t = 40)]
        chunk_delay_ms: u64,
    },
    /// Run the Z.AI-compatible mock upstream (see docs/mock.md).
    Mock {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: String,
        /// Text chunks in each answer.
        #[arg(long, default_value_t = 20)]
        chunks: usize,
        #[arg(long, default_value_t = 0)]
        first_byte_ms: u64,
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
        /// Fault spec applied to every request, e.g. `429-1302` or `slow-chunks=100`.
        #[arg(long)]
        fault: Option<String>,
        /// Serve one API format only (`openai` or `anthropic`), like a single-format upstream.
        #[arg(long)]
        only: Option<String>,
        /// Serve HTTPS with this certificate chain (PEM), offering `h2` and `http/1.1`.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// With `--tls-cert`: the protocols offered by ALPN, in order of preference
        /// (`http/1.1` alone plays an upstream without HTTP/2).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "h2,http/1.1",
            value_parser = ["h2", "http/1.1"],
            requires = "tls_cert"
        )]
        tls_alpn: Vec<String>,
    },
    /// Manage client keys.
    Keys {
        #[arg(long, env = "GLMGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Validate the configuration and print what it resolves to (secrets redacted).
    CheckConfig {
        #[arg(long, env = "GLMGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; its secret is printed once and never stored.
    Create {
        #[arg(long)]
        name: String,
        /// Expiry: `YYYY-MM-DD` (midnight UTC) or an RFC 3339 timestamp.
        #[arg(long)]
        expires: Option<String>,
        /// Models this key may use: comma-separated patterns, `*` as wildcard
        /// (checked after aliases), e.g. `glm-4.7,glm-4.5*`.
        #[arg(long)]
        models: Option<String>,
        /// A model that replaces whatever the client asks for.
        #[arg(long)]
        force_model: Option<String>,
        /// How reasoning is shown to this key: passthrough, think_tags or strip.
        #[arg(long)]
        reasoning: Option<String>,
    },
    /// List keys (prefixes only; secrets are not stored).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id, name or prefix.
    Revoke { which: String },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("glmgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("glmgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let settings = config::load(config.as_deref())?;
            crate::logging::init(settings.log_format, &settings.log_level);
            if settings.upstream.key_count() == 0 {
                tracing::warn!("no upstream key configured (upstream.keys or ZAI_API_KEY); /ready reports not ready");
            }
            let listener = crate::app::bind(settings.listen).await?;
            let stop = crate::app::termination_signal();
            crate::app::serve(settings, listener, stop).await
        }
        Command::Demo {
            listen,
            db,
            chunk_delay_ms,
        } => {
            crate::logging::init(LogFormat::Text, "info");
            crate::demo::run(&listen, &db, Duration::from_millis(chunk_delay_ms)).await
        }
        Command::Mock {
            listen,
            chunks,
            first_byte_ms,
            chunk_delay_ms,
            fault,
            only,
            tls_cert,
            tls_key,
            tls_alpn,
        } => {
            crate::logging::init(LogFormat::Text, "info");
            let only = match only.as_deref() {
                None | Some("both") => None,
                Some("openai") => Some(crate::error::Dialect::OpenAi),
                Some("anthropic") => Some(crate::error::Dialect::Anthropic),
                Some(other) => anyhow::bail!("--only: `{other}`; use openai or anthropic"),
            };
            if let Some(spec) = &fault {
                crate::mock::faults::Faults::default()
                    .add(spec)
                    .map_err(|e| anyhow::anyhow!("--fault: {e}"))?;
            }
            let tls = match (&tls_cert, &tls_key) {
                (Some(cert), Some(key)) => {
                    let alpn: Vec<&str> = tls_alpn.iter().map(String::as_str).collect();
                    Some(crate::mock::tls_config(cert, key, &alpn)?)
                }
                _ => None,
            };
            let listener = crate::app::bind(listen.as_str()).await?;
            tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "glmgate mock listening");
            let options = crate::mock::MockOptions {
                chunks,
                first_byte_delay: Duration::from_millis(first_byte_ms),
                chunk_delay: Duration::from_millis(chunk_delay_ms),
                fault,
                only,
            };
            let serve = match tls {
                Some(tls) => futures_util::future::Either::Left(crate::mock::serve_tls(
                    listener, tls, options,
                )),
                None => futures_util::future::Either::Right(crate::mock::serve(listener, options)),
            };
            tokio::select! {
                r = serve => r?,
                _ = crate::app::termination_signal() => {}
            }
            Ok(())
        }
        Command::Keys { config, action } => {
            let settings = config::load(config.as_deref())?;
            keys(&settings, action).await
        }
        Command::CheckConfig { config } => {
            let settings = config::load(config.as_deref())?;
            println!("{settings:#?}");
            Ok(())
        }
    }
}

/// Parses `YYYY-MM-DD` (midnight UTC) or RFC 3339 into unix seconds.
pub fn parse_expiry(text: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp());
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        anyhow::anyhow!("--expires: `{text}` is not YYYY-MM-DD or an RFC 3339 time")
    })?;
    Ok(day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp())
}

fn date(ts: Option<i64>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

async fn keys(settings: &Settings, action: KeysAction) -> anyhow::Result<()> {
    let store = Store::open(&settings.store_path).await?;
    match action {
        KeysAction::Create {
            name,
            expires,
            models,
            force_model,
            reasoning,
        } => {
            let expires_at = expires.as_deref().map(parse_expiry).transpose()?;
            if let Some(r) = &reasoning {
                if crate::translate::reasoning::ReasoningMode::parse(r).is_none() {
                    anyhow::bail!("--reasoning: use passthrough, think_tags or strip");
                }
            }
            let rules = crate::auth::KeyModels {
                allowed: models.filter(|m| !m.trim().is_empty()),
                force: force_model.filter(|m| !m.trim().is_empty()),
                reasoning,
            };
            let (row, secret) =
                crate::auth::create_key_with(&store, &name, expires_at, rules).await?;
            println!("{secret}");
            eprintln!(
                "created key {} (id {}, prefix {}); the secret above is shown only once",
                row.name, row.id, row.key_prefix
            );
        }
        KeysAction::List { json } => {
            let rows = store.list_keys().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<5} {:<20} {:<12} {:<17} {:<17} status",
                    "id", "name", "prefix", "created", "expires"
                );
                for r in rows {
                    let status = if r.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<5} {:<20} {:<12} {:<17} {:<17} {status}",
                        r.id,
                        r.name,
                        r.key_prefix,
                        date(Some(r.created_at)),
                        date(r.expires_at)
                    );
                }
            }
        }
        KeysAction::Revoke { which } => {
            let n = store
                .revoke_key(&which, chrono::Utc::now().timestamp())
                .await?;
            if n == 0 {
                anyhow::bail!("no active key has id, name or prefix `{which}`");
            }
            eprintln!(
                "revoked {n} key(s); running gateways stop accepting within the key cache TTL"
            );
        }
    }
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn expiry_formats() {
        assert_eq!(
            super::parse_expiry("2030-01-01").expect("date"),
            1_893_456_000
        );
        assert_eq!(
            super::parse_expiry("2030-01-01T00:00:00Z").expect("rfc3339"),
            1_893_456_000
        );
        assert!(super::parse_expiry("next week").is_err());
    }
}
