//! The `nnspin` command line: `nnspin up` serves the app a spin.toml describes.

use std::time::{Duration, Instant};

use nnspin::api_keys::ApiKeys;
use nnspin::backend::{BackendKind, Device, Precision, WeightFormat};
use nnspin::lifecycle::{self, Server};
use nnspin::registry::admission::ContextLimits;
use nnspin::registry::{DEFAULT_PREFIX_CACHE_MIB, ModelSettings};
use nnspin::trusted_proxies::{Network, TrustedProxies};
use nnspin::{app, serve};
use wasmtime::error::Context;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nnspin",
    version,
    about = "Serverless LLM inference: WASI components over wasi-nn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the app a spin.toml describes.
    Up(UpArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// The app manifest: a spin.toml, or a directory holding one.
    #[arg(
        short = 'f',
        long = "from",
        default_value = "spin.toml",
        env = "NNSPIN_MANIFEST"
    )]
    manifest: PathBuf,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed). Without it,
    /// 0.0.0.0:$PORT where PORT is set (Knative's and Cloud Run's contract), else 127.0.0.1:3000.
    #[arg(long, env = "NNSPIN_LISTEN")]
    listen: Option<String>,
    /// Spin's runtime configuration file, as SpinKube's executor passes it: `[llm_compute] type =
    /// "spin"` is accepted (nnspin computes locally); sections for services nnspin does not provide
    /// are refused.
    #[arg(long)]
    runtime_config_file: Option<PathBuf>,
    /// Directory holding one model directory per name listed in the components' `ai_models`.
    #[arg(long, default_value = "models", env = "NNSPIN_MODELS_DIR")]
    models_dir: PathBuf,
    /// Inference backend for models spin.toml does not place (`[model.NAME] backend = ...`). By default
    /// each model's own: OpenVINO on the CPU where its directory holds the stateful IR (batched on
    /// PagedAttention), ONNX Runtime otherwise.
    #[arg(long, value_enum, env = "NNSPIN_BACKEND")]
    backend: Option<BackendKind>,
    /// Device for those models: cpu, gpu (ONNX Runtime CUDA or OpenVINO GPU) or tensorrt.
    #[arg(long, default_value = "cpu", env = "NNSPIN_DEVICE")]
    device: Device,
    /// How exactly those models compute: exact (fp32 activations) or fast (each engine's fast kernels:
    /// int8 activations on ONNX Runtime, the OpenVINO CPU plugin's defaults); see bench/quality.py.
    #[arg(long, value_enum, default_value_t = Precision::Exact, env = "NNSPIN_PRECISION")]
    precision: Precision,
    /// Model files for those models; by default OpenVINO prefers an IR when the directory has one.
    #[arg(long, value_enum, env = "NNSPIN_FORMAT")]
    format: Option<WeightFormat>,
    /// Inference threads per model (0: the backend's default, one per core).
    #[arg(long, default_value_t = 0, env = "NNSPIN_THREADS")]
    threads: usize,
    /// Memory per model, in MiB, that finished sequences' KV caches may keep so later prompts sharing
    /// their prefix (the next turn of a chat, a common system prompt) skip its prefill; 0 switches
    /// prefix caching off. Models served batched: ONNX Runtime's shared rows, OpenVINO's PagedAttention.
    #[arg(long, default_value_t = DEFAULT_PREFIX_CACHE_MIB, env = "NNSPIN_PREFIX_CACHE_MIB")]
    prefix_cache_mib: u64,
    /// When a model's GPU cannot be used, load it on the CPU (with a warning) instead of failing.
    #[arg(long)]
    cpu_fallback: bool,
    /// Concurrent component instances the pooling allocator reserves room for.
    #[arg(long, default_value_t = 256)]
    max_instances: u32,
    /// Linear memory one component instance may use, in MiB.
    #[arg(long, default_value_t = 256)]
    max_instance_memory_mib: usize,
    /// Sequences each model decodes at once; more wait in its queue. Default: 32 for a model whose
    /// contexts' steps share batched passes (little more costly than one), 8 for one whose contexts
    /// compute alone.
    #[arg(long)]
    max_sequences_per_model: Option<usize>,
    /// Requests that may wait for a model; past that they get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue_per_model: usize,
    /// Exit cleanly after this many seconds without a request in flight (scale to zero).
    #[arg(long, env = "NNSPIN_IDLE_TIMEOUT")]
    idle_timeout_secs: Option<u64>,
    /// Proxies (addresses, or ranges such as 10.0.0.0/8) believed about the client: behind them, rate
    /// limits count a request against the last untrusted address of its X-Forwarded-For header.
    #[arg(
        long = "trusted-proxy",
        env = "NNSPIN_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<Network>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before the process exits.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// Where compiled components are cached, so a restart skips compilation
    /// (default: $XDG_CACHE_HOME/nnspin or ~/.cache/nnspin).
    #[arg(long, env = "NNSPIN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile components at every start instead of using the cache.
    #[arg(long)]
    no_cache: bool,
    /// CPU time one request's component may spend in its own code (not waiting for inference), in
    /// milliseconds; past it the request is stopped with 504.
    #[arg(long, default_value_t = 30_000)]
    max_instance_cpu_ms: u64,
    /// A client that takes longer than this to send its headers, or pauses this long while sending its
    /// body, is cut off (408 for a body), so slow clients cannot hold instances.
    #[arg(long, default_value_t = 30)]
    client_timeout_secs: u64,
    /// A file of API keys (one per line); with it, or with NNSPIN_API_KEYS (comma-separated), requests
    /// need `Authorization: Bearer <key>`.
    #[arg(long)]
    api_keys_file: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wasmtime=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Up(args) => up(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // One line, causes included, so a failed start says what is missing where operators look.
        Err(e) => {
            eprintln!("nnspin: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn up(args: UpArgs) -> wasmtime::Result<()> {
    let api_keys = api_keys(&args)?;
    if let Some(file) = &args.runtime_config_file {
        nnspin::runtime_config::check_file(file)?;
    }
    let listen = listen_address(
        args.listen.as_deref(),
        std::env::var("PORT").ok().as_deref(),
    );
    let config = app::AppConfig {
        manifest: nnspin::manifest::locate(&args.manifest),
        models_dir: args.models_dir,
        cache_dir: (!args.no_cache).then(|| args.cache_dir.unwrap_or_else(default_cache_dir)),
        model_defaults: ModelSettings {
            backend: args.backend,
            device: args.device,
            precision: args.precision,
            threads: args.threads,
            format: args.format,
            prefix_cache_mib: args.prefix_cache_mib,
        },
        cpu_fallback: args.cpu_fallback,
        max_instances: args.max_instances,
        max_instance_memory: args.max_instance_memory_mib << 20,
        max_instance_cpu: Duration::from_millis(args.max_instance_cpu_ms),
        context_limits: ContextLimits {
            max_active: args.max_sequences_per_model,
            max_queued: args.max_queue_per_model,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Listen first: while models and components load, requests get 503 instead of a refused
        // connection, which is what health checks of scale-to-zero platforms expect.
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        // Tests and scripts wait for these lines.
        println!("nnspin listening on http://{}", listener.local_addr()?);
        let trusted_proxies = TrustedProxies::new(args.trusted_proxies.clone());
        let server = Arc::new(Server::new(api_keys, trusted_proxies));
        let idle_timeout = args.idle_timeout_secs.map(Duration::from_secs);
        let stop = lifecycle::stop_signal(server.clone(), idle_timeout);
        let grace = Duration::from_secs(args.shutdown_grace_secs);
        let client_timeout = Duration::from_secs(args.client_timeout_secs.max(1));
        let serving = tokio::spawn(serve::serve(
            server.clone(),
            listener,
            stop,
            grace,
            client_timeout,
        ));

        let started = Instant::now();
        let app = tokio::task::spawn_blocking(move || app::App::load(&config)).await??;
        server.set_app(Arc::new(app));
        tracing::info!(ms = started.elapsed().as_millis() as u64, "app ready");
        println!("nnspin ready");

        let reason = serving.await??;
        tracing::info!(?reason, "stopped");
        Ok(())
    })
}

/// Where to listen: `--listen`, else every interface on `$PORT`, else the local default.
fn listen_address(listen: Option<&str>, port: Option<&str>) -> String {
    match (listen, port) {
        (Some(listen), _) => listen.to_string(),
        (None, Some(port)) if !port.is_empty() => format!("0.0.0.0:{port}"),
        _ => "127.0.0.1:3000".to_string(),
    }
}

/// Keys from `NNSPIN_API_KEYS` and `--api-keys-file`; none means no key is needed.
fn api_keys(args: &UpArgs) -> wasmtime::Result<ApiKeys> {
    let mut text = std::env::var("NNSPIN_API_KEYS").unwrap_or_default();
    if let Some(file) = &args.api_keys_file {
        let keys = std::fs::read_to_string(file)
            .with_context(|| format!("reading API keys from {}", file.display()))?;
        text.push('\n');
        text.push_str(&keys);
    }
    let keys = ApiKeys::parse(&text);
    if keys.is_enabled() {
        tracing::info!("API keys required ({keys:?})");
    }
    Ok(keys)
}

/// `$XDG_CACHE_HOME/nnspin`, else `~/.cache/nnspin`, else `.nnspin-cache`.
fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map_or_else(
            || PathBuf::from(".nnspin-cache"),
            |cache| cache.join("nnspin"),
        )
}

#[cfg(test)]
mod tests {
    use super::listen_address;

    #[test]
    fn listen_falls_back_to_port_then_the_local_default() {
        assert_eq!(
            listen_address(Some("127.0.0.1:0"), Some("9000")),
            "127.0.0.1:0"
        );
        assert_eq!(listen_address(None, Some("9000")), "0.0.0.0:9000");
        assert_eq!(listen_address(None, Some("")), "127.0.0.1:3000");
        assert_eq!(listen_address(None, None), "127.0.0.1:3000");
    }
}
