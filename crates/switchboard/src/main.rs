//! `switchboard`: the contact-center voice platform in one binary.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use switchboard::{Registry, RoleKind, RunOptions};
use switchboard_config::Config;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Switchboard: SIP proxy, registrar, B2BUA and media server for contact centers.
///
/// Without --config, the built-in demo configuration is used: tenant `demo` with users 1001 to
/// 1010 (password `secret`), SIP on 127.0.0.1:5060 UDP and TCP, HTTP on 127.0.0.1:8080.
/// Print it with `switchboard config example`.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every role in this process.
    Up(RunArgs),
    /// Run only some roles in this process.
    Run {
        /// Roles to run, comma-separated (e.g. `sip-proxy,registrar`).
        #[arg(long, value_delimiter = ',', required = true, value_name = "ROLES")]
        roles: Vec<RoleKind>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate FILE without starting anything: prints `ok` and exits 0, or prints every
    /// problem (file, line, column, key) and exits 1.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print the annotated built-in demo configuration (every key, with its default).
    Example,
}

/// `--http-auth`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuthArg {
    ApiKeys,
    None,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file; without it the built-in demo configuration is used.
    #[arg(long, short = 'c', env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// SIP UDP listen address, overriding sip.udp (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    sip_udp: Option<SocketAddr>,
    /// SIP TCP listen address, overriding sip.tcp (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    sip_tcp: Option<SocketAddr>,
    /// HTTP listen address, overriding http.listen (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// The media server's SIP UDP listen address, overriding mcp.udp (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    mcp_udp: Option<SocketAddr>,
    /// The SIP Server's UDP listen address, overriding sip_node.udp (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    sip_node_udp: Option<SocketAddr>,
    /// Whether /v1/ requests need an API key, overriding http.auth: `api-keys` or `none`.
    #[arg(long, value_name = "MODE")]
    http_auth: Option<AuthArg>,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
    /// `info,switchboard=debug`. Falls back to RUST_LOG, then `info`.
    #[arg(long, env = "SWITCHBOARD_LOG", value_name = "LEVEL")]
    log: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => match Config::load(&file) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Config(ConfigCommand::Example) => {
            print!("{}", switchboard_config::EXAMPLE_TOML);
            ExitCode::SUCCESS
        }
        Command::Up(args) => start(RoleKind::ALL.to_vec(), args),
        Command::Run { roles, args } => start(roles, args),
    }
}

fn start(roles: Vec<RoleKind>, args: RunArgs) -> ExitCode {
    if let Err(e) = init_logging(args.log.as_deref()) {
        eprintln!("switchboard: {e:#}");
        return ExitCode::FAILURE;
    }
    match start_inner(roles, args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start_inner(roles: Vec<RoleKind>, args: RunArgs) -> anyhow::Result<u8> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            warn!(
                "no --config given: running the built-in demo configuration \
                 (tenant demo, users 1001-1010, password \"secret\", loopback only)"
            );
            Config::demo()
        }
    };
    if let Some(addr) = args.sip_udp {
        config.sip.udp = Some(addr);
    }
    if let Some(addr) = args.sip_tcp {
        config.sip.tcp = Some(addr);
    }
    if let Some(addr) = args.http {
        config.http.listen = addr;
    }
    if let Some(addr) = args.mcp_udp {
        config.mcp.udp = addr;
    }
    if let Some(addr) = args.sip_node_udp {
        config.sip_node.udp = addr;
    }
    match args.http_auth {
        Some(AuthArg::ApiKeys) => config.http.auth = switchboard_config::HttpAuth::ApiKeys,
        Some(AuthArg::None) => config.http.auth = switchboard_config::HttpAuth::None,
        None => {}
    }
    if config.http.auth == switchboard_config::HttpAuth::None {
        warn!("http.auth is \"none\": the REST API and event stream take requests without a key");
    }
    config
        .validate()
        .context("configuration invalid after command-line overrides")?;

    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Prefix("media_tick_".into()), &TICK_BUCKETS)
        .context("metrics buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    info!(version = env!("CARGO_PKG_VERSION"), "switchboard starting");
    let registry = Registry::builtin();
    let upkeep = metrics.clone();
    let outcome = runtime.block_on(async move {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        switchboard::run(config, &roles, &registry, metrics, RunOptions::default()).await
    })?;
    // Do not wait for leftover tasks (e.g. roles abandoned at the end of the grace period).
    runtime.shutdown_background();
    Ok(outcome.exit_code())
}

/// Buckets of the media pacing histograms (`media_tick_*_seconds`), seconds: fine around the
/// 2 ms spacing goal, so that the share of ticks under it can be read over any interval (a
/// summary's quantiles cover its rolling minute, ramp-up included).
const TICK_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0,
];

fn init_logging(level: Option<&str>) -> anyhow::Result<()> {
    let filter = match level {
        Some(directives) => EnvFilter::try_new(directives)
            .with_context(|| format!("invalid --log value {directives:?}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}
