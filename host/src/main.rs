//! The `nnspin` command line: `nnspin up` serves the app a spin.toml describes.

use nnspin::{app, nn, serve};

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
    /// The app manifest.
    #[arg(
        short = 'f',
        long = "from",
        default_value = "spin.toml",
        env = "NNSPIN_MANIFEST"
    )]
    manifest: PathBuf,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:3000", env = "NNSPIN_LISTEN")]
    listen: String,
    /// Directory holding one model directory per name listed in the components' `ai_models`.
    #[arg(long, default_value = "models", env = "NNSPIN_MODELS_DIR")]
    models_dir: PathBuf,
    /// Inference threads per model (0: the backend's default, one per core).
    #[arg(long, default_value_t = 0, env = "NNSPIN_THREADS")]
    threads: usize,
    /// Concurrent component instances the pooling allocator reserves room for.
    #[arg(long, default_value_t = 256)]
    max_instances: u32,
    /// Linear memory one component instance may use, in MiB.
    #[arg(long, default_value_t = 256)]
    max_instance_memory_mib: usize,
    /// CPU time one request's component may spend in its own code (not waiting for inference), in
    /// milliseconds; past it the request is stopped with 504.
    #[arg(long, default_value_t = 30_000)]
    max_instance_cpu_ms: u64,
}

fn main() -> wasmtime::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wasmtime=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up(args) => up(args),
    }
}

fn up(args: UpArgs) -> wasmtime::Result<()> {
    let config = app::AppConfig {
        manifest: args.manifest,
        models_dir: args.models_dir,
        threads: args.threads,
        max_instances: args.max_instances,
        max_instance_memory: args.max_instance_memory_mib << 20,
        max_instance_cpu: std::time::Duration::from_millis(args.max_instance_cpu_ms),
    };
    let backend = Arc::new(nn::onnxruntime::OnnxRuntime::new()?);
    let started = std::time::Instant::now();
    let app = Arc::new(app::App::load(&config, backend)?);
    tracing::info!(ms = started.elapsed().as_millis() as u64, "app ready");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        let addr = serve::local_addr(&listener)?;
        // Tests and scripts wait for this line.
        println!("nnspin listening on http://{addr}");
        tokio::select! {
            result = serve::serve(app, listener) => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
