//! The `conveyor` command: `run` (the operator), `crds` (print or write the CRDs), `version`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use conveyor::clients::RateLimit;
use conveyor::controller::Config;
use conveyor::engine::destinations::{DEFAULT_ALLOWED, Destinations};
use conveyor::leader::LeaseConfig;
use conveyor::operator::{RunConfig, run};
use conveyor::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "conveyor",
    version,
    about = "Kubernetes operator for message-queue infrastructure",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator.
    Run(Box<RunArgs>),
    /// Print every CRD as YAML, or write one file per kind into a directory.
    Crds {
        /// Directory to write `<plural>.conveyor.dev.yaml` files into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
#[command(args_override_self = true)]
struct RunArgs {
    /// Namespaces to reconcile, comma separated; all namespaces when empty.
    #[arg(long, env = "CONVEYOR_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "CONVEYOR_PROBE_ADDR", default_value = "0.0.0.0:8080")]
    probe_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "CONVEYOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter in the RUST_LOG syntax.
    #[arg(long, env = "CONVEYOR_LOG", default_value = "info,kube_runtime=warn")]
    log: String,
    /// Run without leader election (only when exactly one operator runs).
    #[arg(long, env = "CONVEYOR_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(
        long,
        env = "CONVEYOR_LEASE_NAMESPACE",
        default_value = "conveyor-system"
    )]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "CONVEYOR_LEASE_NAME", default_value = "conveyor-operator")]
    lease_name: String,
    /// How long a leader's claim lasts without renewal, in seconds.
    #[arg(long, env = "CONVEYOR_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Identity in the Lease; the pod name in a cluster. Defaults to the host name and pid.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Destinations external Brokers may point at, comma separated: IP ranges (`10.0.0.0/8`)
    /// and exact host names. Any other name must resolve into an allowed range. Loopback must
    /// be listed to be reachable.
    #[arg(
        long,
        env = "CONVEYOR_ALLOWED_BROKER_DESTINATIONS",
        value_delimiter = ',',
        default_values = DEFAULT_ALLOWED
    )]
    allowed_broker_destinations: Vec<String>,
    /// The namespace the operator runs in; its pods are let through managed brokers' NetworkPolicies.
    #[arg(long, env = "POD_NAMESPACE", default_value = "conveyor-system")]
    operator_namespace: String,
    /// Seconds a deletion that needs an unreachable broker is retried before the resource is let
    /// go and the stream left in the broker (with an Event saying so).
    #[arg(
        long,
        env = "CONVEYOR_UNREACHABLE_DELETION_GRACE_SECONDS",
        default_value_t = 300
    )]
    unreachable_deletion_grace_seconds: u64,
    /// Seconds between refreshes of a Queue's or Topic's depth in status (each also looks for
    /// drift in the broker).
    #[arg(long, env = "CONVEYOR_STREAM_REFRESH_SECONDS", default_value_t = 30)]
    stream_refresh_seconds: u64,
    /// Requests per second the controllers may send to the Kubernetes API server, on average
    /// (a client-side limit; the leader election has a client of its own and is not limited).
    #[arg(long, env = "CONVEYOR_KUBE_API_QPS", default_value_t = 500.0)]
    kube_api_qps: f64,
    /// Requests the controllers may send at once after being idle, above the average rate.
    #[arg(long, env = "CONVEYOR_KUBE_API_BURST", default_value_t = 1000)]
    kube_api_burst: u32,
    /// Reconciles that may run at once, per kind and watched namespace.
    #[arg(long, env = "CONVEYOR_MAX_CONCURRENT_RECONCILES", default_value_t = 16)]
    max_concurrent_reconciles: u16,
    /// Seconds between full checks of a Queue or Topic against the broker; in between, the
    /// Broker listing (every refresh) answers for it as long as its settings there stay as
    /// they were.
    #[arg(
        long,
        env = "CONVEYOR_STREAM_FULL_CHECK_SECONDS",
        default_value_t = 3600
    )]
    stream_full_check_seconds: u64,
    /// Seconds between reconciliations of an unchanged object.
    #[arg(long, env = "CONVEYOR_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
}

fn default_identity() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "conveyor".into());
    format!("{}-{}", host.trim(), std::process::id())
}

fn write_crds(out: Option<PathBuf>) -> Result<(), String> {
    let crds = conveyor::api::crds();
    let Some(dir) = out else {
        print!(
            "{}",
            conveyor::crdgen::render_all(&crds).map_err(|e| e.to_string())?
        );
        return Ok(());
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for crd in &crds {
        let path = dir.join(conveyor::crdgen::file_name(crd));
        let yaml = conveyor::crdgen::render(crd).map_err(|e| e.to_string())?;
        std::fs::write(&path, yaml).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn run_operator(args: RunArgs) -> Result<(), String> {
    telemetry::init(args.log_format, &args.log);
    let destinations = Destinations::parse(&args.allowed_broker_destinations)
        .map_err(|e| format!("--allowed-broker-destinations: {e}"))?;
    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| format!("finding the Kubernetes API server: {e}"))?;
    if args.kube_api_qps.is_nan() || args.kube_api_qps <= 0.0 || args.kube_api_burst == 0 {
        return Err("--kube-api-qps and --kube-api-burst must be above zero".into());
    }
    let lease = (!args.no_leader_election).then(|| LeaseConfig {
        namespace: args.lease_namespace,
        name: args.lease_name,
        identity: args.identity.clone().unwrap_or_else(default_identity),
        duration: Duration::from_secs(args.lease_duration_seconds.max(1)),
    });
    let cfg = RunConfig {
        controller: Config {
            namespaces: args
                .namespaces
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect(),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
            stream_refresh: Duration::from_secs(args.stream_refresh_seconds.max(1)),
            full_check: Duration::from_secs(args.stream_full_check_seconds.max(1)),
            instance: args.identity,
            destinations,
            operator_namespace: args.operator_namespace,
            deletion_grace: Duration::from_secs(args.unreachable_deletion_grace_seconds),
            concurrency: args.max_concurrent_reconciles.max(1),
        },
        lease,
        probe_addr: args.probe_addr,
        rate_limit: RateLimit {
            qps: args.kube_api_qps,
            burst: args.kube_api_burst,
        },
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), namespaces = ?cfg.controller.namespaces, "starting Conveyor");
    run(kube_config, cfg).await.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("conveyor {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Crds { out } => write_crds(out),
        Command::Run(args) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                let result = rt.block_on(run_operator(*args));
                // Exit without tearing the runtime down: tasks still running (a reconcile that
                // outlived a lost lease) are simply stopped with the process, not cancelled
                // one by one under the controller runner that awaits them.
                let code = match result {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("conveyor: {e}");
                        1
                    }
                };
                std::process::exit(code);
            }
            Err(e) => Err(format!("starting the runtime: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conveyor: {e}");
            ExitCode::FAILURE
        }
    }
}
