//! The `corral` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use corral::config::{Config, ServeArgs, StoreFlags, default_data_dir};
use corral::store::DataDir;

/// How long a stopping server waits for the requests in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// mimalloc: the handshake path allocates and frees many small buffers per connection, which
/// glibc's malloc serves more slowly (see docs/PERFORMANCE.md). Its v2 line (Cargo.toml): v3 kept
/// about twice the memory per idle tunnel on a replica on etcd, where etcd's client thread
/// allocates beside the tunnels, for the same handshake cost (docs/SCALE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process. mimalloc asks for them on the memory it reserves
/// (`madvise(MADV_HUGEPAGE)`), and a huge page is resident whole, 2 MiB, once any byte of it is
/// touched: a server's memory then grew in 2 MiB steps wherever a tunnel's or a sweep's buffers
/// landed, a replica's per idle tunnel measured anywhere from 16 to 28 KiB from one run to the
/// next (docs/SCALE.md). Takes effect for every page touched from here on.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integers only and changes no memory of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

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
    Serve(Box<ServeArgs>),
    /// Inspect the CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Run cluster agent(s): verify the server's CA checksum, open a tunnel, relay the server's dials.
    Agent(corral::agent::AgentArgs),
    /// Print a kubeconfig for a cluster, reached through corral's cluster proxy.
    Kubeconfig(corral::kubeconfig::KubeconfigArgs),
    /// Exit 0 when the server answers its health check (for a container's HEALTHCHECK). It reads
    /// the server's own settings (file, environment, flags) for where that is.
    Healthcheck {
        /// The health endpoint, http:// or https:// (the certificate is not verified: the check runs
        /// beside the server) [default: /healthz on 127.0.0.1 at the configured HTTPS port, over
        /// plain HTTP with --tls external].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        #[command(flatten)]
        serve: Box<ServeArgs>,
    },
    /// Set and print a new password for the admin user (its login tokens stop working); a running
    /// server takes it at once.
    ResetPassword {
        /// Data directory holding the setup state.
        #[arg(long, env = "CORRAL_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Lab scenarios: serve broken certificates on purpose, list and end them.
    Lab {
        #[command(subcommand)]
        command: corral::labctl::LabCommand,
    },
    /// Load generators: TLS handshakes, tunnel throughput.
    Bench {
        #[command(subcommand)]
        command: corral::bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the checksum of what /cacerts serves, which agents verify (CATTLE_CA_CHECKSUM): the
    /// server's settings (file, environment, flags) decide what that is, as for `corral serve`.
    /// Nothing is printed when /cacerts is empty (a certificate from a public CA).
    Checksum(Box<ServeArgs>),
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    corral::support::set_thread_idle(release_freed_memory);
    // Every command may hold many connections (a server, `agent --count`, a load generator).
    corral::net::raise_open_files_limit();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match from_environment(&e) {
            Some(message) => return fail(2, message),
            None => e.exit(),
        },
    };
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Agent(args) => agent(args),
        Command::Kubeconfig(args) => kubeconfig(args),
        Command::ResetPassword { data_dir, store } => reset_password(data_dir, store),
        Command::Healthcheck { url, serve } => healthcheck(url, *serve),
        Command::Bench { command } => bench(command),
        Command::Lab { command } => lab(command),
        Command::Ca {
            command: CaCommand::Checksum(serve),
        } => ca_checksum(*serve),
    }
}

fn ca_checksum(serve: ServeArgs) -> ExitCode {
    let config = match Config::resolve(serve) {
        Ok(config) => config,
        Err(e) => return fail(2, e),
    };
    match corral::app::served_checksum(&config) {
        Ok(Some(sum)) => {
            print_out(&format!("{sum}\n"));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!(
                "corral: /cacerts is empty with these settings (a certificate from a public CA, \
                 ACME, or a proxy without --cacerts): agents verify the server with their system \
                 roots, and take no checksum"
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

fn healthcheck(url: Option<String>, serve: ServeArgs) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => match Config::resolve(serve) {
            Ok(config) => corral::app::health_url(&config),
            Err(e) => return fail(2, e),
        },
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(corral::client::healthcheck(&url)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ corral::client::HealthError::InvalidUrl(..)) => fail(2, e),
        Err(e) => fail(1, e),
    }
}

/// A bad value that came from an environment variable (its flag is not on the command line), told
/// by the variable's name: clap names only the flag.
fn from_environment(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let on_command_line =
        std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if on_command_line {
        return None;
    }
    let command = <Cli as clap::CommandFactory>::command();
    let env = find_env(&command, long)?;
    let value = std::env::var(&env).ok()?;
    let reason = match (
        std::error::Error::source(error),
        error.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        (None, _) => "not a valid value".to_string(),
    };
    Some(format!(
        "invalid {env}={value:?} (the environment variable of --{long}): {reason}"
    ))
}

/// The environment variable of the argument `--long`, in any subcommand.
fn find_env(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_env(sub, long))
        })
}

fn reset_password(data_dir: Option<PathBuf>, store: StoreFlags) -> ExitCode {
    let dir = match data_dir.map_or_else(default_data_dir, Ok) {
        Ok(dir) => dir,
        Err(e) => return fail(2, e),
    };
    let settings = match store.resolve() {
        Ok(settings) => settings,
        Err(e) => return fail(2, e),
    };
    let dir = DataDir::existing(&dir);
    let store = match corral::app::open_backend(settings.as_ref(), &dir) {
        Ok(store) => store,
        Err(e) => return fail(1, e),
    };
    match corral::accounts::bootstrap::reset_password(store) {
        Ok(reset) => {
            print_out(&format!(
                "New password for default administrator ({}):\n{}\n",
                reset.user_id, reset.password
            ));
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e.to_string()),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(e) => return fail(2, e),
    };
    init_logging();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let server = match corral::app::start(&config).await {
            Ok(server) => server,
            Err(e) => return fail(1, e),
        };
        shutdown_signal().await;
        server.shutdown(SHUTDOWN_GRACE).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Gives the memory freed since the last time back to the system, at most once a second per
/// worker thread, when that thread runs out of work (`corral::support::thread_idle`). mimalloc
/// returns a freed range only after a delay (10 ms) and only when its thread allocates or frees
/// again; a worker that goes idle after a connection storm (a thousand handshakes' buffers freed,
/// the tunnels' long-lived state left) kept those ranges resident, about 2.5 KiB per tunnel that
/// connected (docs/SCALE.md). Returning them at once on every free instead
/// (`MIMALLOC_PURGE_DELAY=0`) halved tunnel throughput: each 64 KiB message's pages were returned
/// and faulted in again.
fn release_freed_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    const EVERY: Duration = Duration::from_secs(1);
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last.get().is_some_and(|at| now.duration_since(at) < EVERY) {
            return;
        }
        last.set(Some(now));
        // SAFETY: mi_collect takes a flag and touches only mimalloc's own state for this thread.
        unsafe { libmimalloc_sys::mi_collect(true) };
    });
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(corral::support::thread_idle)
        .build()
        .map_err(|e| fail(1, format!("cannot start the runtime: {e}")))
}

fn agent(args: corral::agent::AgentArgs) -> ExitCode {
    init_logging();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let prepared = match corral::agent::prepare(&args).await {
            Ok(prepared) => prepared,
            Err(e) => return fail(1, e),
        };
        tokio::select! {
            _ = corral::agent::run(args, prepared) => {}
            _ = shutdown_signal() => {}
        }
        ExitCode::SUCCESS
    })
}

fn bench(command: corral::bench::BenchCommand) -> ExitCode {
    use corral::bench::{BenchCommand, handshake, tunnel};
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        match command {
            BenchCommand::Handshake(args) => handshake::run(args)
                .await
                .map(|finished| (finished.text, finished.success)),
            BenchCommand::Tunnel(args) => tunnel::run(args).await.map(|text| (text, true)),
        }
    });
    match result {
        Ok((report, success)) => {
            print_out(&format!("{}\n", report.trim_end()));
            match success {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(1),
            }
        }
        Err(e) => fail(1, e),
    }
}

fn kubeconfig(args: corral::kubeconfig::KubeconfigArgs) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(corral::kubeconfig::fetch(&args)) {
        Ok(config) => {
            print_out(&config);
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

fn lab(command: corral::labctl::LabCommand) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if matches!(command, corral::labctl::LabCommand::Up(_)) {
        init_logging();
    }
    runtime.block_on(async {
        match corral::labctl::run(command).await {
            Ok(corral::labctl::Ran::Printed(out)) => {
                print_out(&out);
                ExitCode::SUCCESS
            }
            Ok(corral::labctl::Ran::Lab(lab)) => {
                print_out(&lab.summary);
                shutdown_signal().await;
                lab.stop(SHUTDOWN_GRACE).await;
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, e),
        }
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

/// Writes a command's output to stdout. A reader that went away (`| head`) is not an error worth
/// a panic, as `println!` would make it.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
