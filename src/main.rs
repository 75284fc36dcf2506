//! The `corral` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use corral::config::{Config, ServeArgs, default_data_dir};
use corral::state::DataDir;

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Rancher 2.x's TLS front end, reproduced"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTPS 8443, HTTP 8080 by default).
    Serve(ServeArgs),
    /// Inspect the CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA checksum agents verify (CATTLE_CA_CHECKSUM).
    Checksum {
        /// Data directory holding the CA.
        #[arg(long, env = "CORRAL_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Ca {
            command: CaCommand::Checksum { data_dir },
        } => {
            let dir = match data_dir.map_or_else(default_data_dir, Ok) {
                Ok(dir) => dir,
                Err(e) => return fail(2, e),
            };
            match corral::server::stored_checksum(&DataDir::existing(&dir)) {
                Ok(sum) => {
                    println!("{sum}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(e) => return fail(2, e),
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        if let Err(e) = corral::server::start(&config).await {
            return fail(1, e);
        }
        shutdown_signal().await;
        tracing::info!("shutting down");
        ExitCode::SUCCESS
    })
}

fn fail(code: u8, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("corral: {error}");
    ExitCode::from(code)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
