//! The `herald` binary: parses the command line and configuration, starts telemetry, and runs
//! the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use herald::app::App;
use herald::config::Config;
use tokio_util::sync::CancellationToken;

/// Herald: outbound webhook delivery, signed, retried and recorded.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
struct Cli {
    /// Configuration file (default: `herald.toml` in the working directory, when present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: the HTTP API, the dispatcher and the scheduled jobs (see `--role`).
    Serve {
        /// Development mode: allow http:// and private or loopback endpoint URLs.
        #[arg(long)]
        dev: bool,
        /// Which side to run.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
        /// Listen address, such as 127.0.0.1:8080 (overrides `listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Database URL (overrides `database_url`).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// Database URL (overrides `database_url`).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the encryption of secrets at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Run a local receiving endpoint that prints each webhook (and can misbehave on purpose).
    Receive {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// Verify signatures with this endpoint secret (`whsec_…`), or for an ed25519 endpoint its
        /// public key (`whpk_…`).
        #[arg(long)]
        secret: Option<String>,
        /// Share of requests answered 500, 0.0–1.0.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Answer every request with this status.
        #[arg(long)]
        status: Option<u16>,
        /// Wait this long before answering, e.g. 20ms.
        #[arg(long, value_parser = parse_duration_arg)]
        delay: Option<std::time::Duration>,
        /// Share of requests never answered, 0.0–1.0.
        #[arg(long, default_value_t = 0.0)]
        hang_rate: f64,
        /// Share of requests whose connection is dropped mid-answer, 0.0–1.0.
        #[arg(long, default_value_t = 0.0)]
        reset_rate: f64,
    },
    /// Measure Herald on this machine: starts a server on a fresh database and a receiver on loopback.
    Bench(herald::tools::bench::Options),
    /// Chaos run: a misbehaving receiver and a server SIGKILLed mid-run; checks nothing was lost.
    Soak(herald::tools::soak::Options),
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    herald::config::parse_duration(text)
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Re-encrypt every stored secret with `secret_key`; `previous_secret_keys` must still list
    /// the old key(s). Also encrypts secrets stored in clear.
    Rekey,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it once on standard output.
    Create {
        /// Confine the token to this tenant (id or external_id); without it, an admin token.
        #[arg(long)]
        tenant: Option<String>,
        /// A label for the token.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Revoke a token by its id (`tok_…`); it stops working at once.
    Revoke {
        /// The token id.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// API, dispatcher and scheduler.
    All,
    /// The HTTP API only.
    Api,
    /// Delivery only (the HTTP listener serves the ops routes).
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if matches!(cli.command, Command::Receive { .. } | Command::Bench { .. } | Command::Soak(_)) {
        herald::telemetry::init(herald::config::LogFormat::Pretty);
        return run_tool(cli.command).await;
    }
    let mut overrides: Vec<(&str, String)> = Vec::new();
    match &cli.command {
        Command::Serve { dev, listen, database_url, .. } => {
            if *dev {
                overrides.push(("dev", "true".to_owned()));
            }
            if let Some(listen) = listen {
                overrides.push(("listen", listen.clone()));
            }
            if let Some(url) = database_url {
                overrides.push(("database_url", url.clone()));
            }
        }
        Command::Migrate { database_url } => {
            if let Some(url) = database_url {
                overrides.push(("database_url", url.clone()));
            }
        }
        Command::Token { .. } | Command::Secrets { .. } => {}
        Command::Receive { .. } | Command::Bench { .. } | Command::Soak(_) => {}
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    herald::telemetry::init(config.log_format);
    match cli.command {
        Command::Serve { role, .. } => serve(config, role).await,
        Command::Migrate { .. } => {
            let store = herald::storage::connect(&config).await?;
            store.migrate().await.context("could not apply database migrations")?;
            store.close().await;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Token { command: TokenCommand::Revoke { id } } => {
            let store = herald::storage::connect(&config).await?;
            store.migrate().await.context("could not apply database migrations")?;
            let revoked = store.revoke_token(&id, herald::domain::time::now_micros()).await;
            store.close().await;
            revoked.map_err(|_| anyhow::anyhow!("token `{id}` not found or already revoked"))?;
            eprintln!("revoked token {id}");
            Ok(())
        }
        Command::Secrets { command: SecretsCommand::Rekey } => {
            let store = herald::storage::connect(&config).await?;
            store.migrate().await.context("could not apply database migrations")?;
            let cipher = config.cipher()?;
            let Some(key_id) = cipher.key_id() else {
                anyhow::bail!("`secret_key` is not set: nothing to encrypt with");
            };
            let changed =
                store.rekey_secrets().await.context("rekeying failed; nothing was lost, run it again")?;
            store.close().await;
            eprintln!(
                "re-encrypted {changed} row(s) with key {key_id}; the previous keys can now be removed"
            );
            Ok(())
        }
        Command::Token { command: TokenCommand::Create { tenant, name } } => {
            let store = herald::storage::connect(&config).await?;
            store.migrate().await.context("could not apply database migrations")?;
            let tenant_id = match tenant {
                Some(key) => Some(
                    store.get_tenant(&key).await.map_err(|_| anyhow::anyhow!("tenant `{key}` not found"))?.id,
                ),
                None => None,
            };
            let (token, secret) =
                herald::http::tenants::issue_token(store.as_ref(), name, tenant_id, None).await?;
            store.close().await;
            eprintln!("created token {} (shown once; store it now)", token.id);
            println!("{secret}");
            Ok(())
        }
        Command::Receive { .. } | Command::Bench { .. } | Command::Soak(_) => run_tool(cli.command).await,
    }
}

/// The tools that need no configuration: `receive`, `bench` and `soak`.
async fn run_tool(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Receive { listen, secret, fail_rate, status, delay, hang_rate, reset_rate } => {
            use herald::tools::receive::{Behaviour, Receiver};
            for (name, rate) in
                [("fail-rate", fail_rate), ("hang-rate", hang_rate), ("reset-rate", reset_rate)]
            {
                if !(0.0..=1.0).contains(&rate) {
                    anyhow::bail!("`--{name}` must be between 0 and 1");
                }
            }
            let behaviour = Behaviour {
                secret,
                fail_rate,
                status,
                delay: delay.unwrap_or_default(),
                hang_rate,
                reset_rate,
                print: true,
            };
            let receiver = Receiver::start(listen, behaviour).await?;
            eprintln!("receiving on {} (Ctrl-C to stop)", receiver.url());
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::Bench(options) => {
            let reports = herald::tools::bench::run(options).await?;
            let lost: usize = reports.iter().map(|r| r.missing).sum();
            if lost > 0 {
                anyhow::bail!("{lost} deliveries did not arrive within the limit");
            }
            Ok(())
        }
        Command::Soak(options) => {
            options.validate()?;
            let report = herald::tools::soak::run(options).await?;
            if !report.passed() {
                anyhow::bail!("the soak found lost, unrecorded or over-limit deliveries (see above)");
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn serve(mut config: Config, role: Role) -> anyhow::Result<()> {
    // Listen for signals before announcing the address, so a prompt SIGTERM is never missed.
    let shutdown = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("could not listen for SIGTERM")?;
    let signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        signal.cancel();
    });
    if config.dev {
        tracing::warn!(
            "DEV MODE: http:// and private or loopback endpoint URLs are allowed; never use this in production"
        );
    }
    config.api_enabled = role != Role::Worker;
    config.dispatcher_enabled = role != Role::Api;
    let app = App::build(config).await?;
    println!("Herald {} listening on http://{}", env!("CARGO_PKG_VERSION"), app.local_addr());
    if let Some(token) = app.bootstrap_token() {
        println!("Admin token (shown once, store it now): {token}");
    }
    app.run(shutdown).await
}
