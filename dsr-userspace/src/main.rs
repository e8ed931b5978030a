//! The `dsr` command line.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use dsr::{config, daemon::Daemon};

#[derive(Parser)]
#[command(
    name = "dsr",
    version,
    about = "XDP Layer-4 load balancer with Direct Server Return"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, fill its maps from the config and forward until SIGINT/SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print what it describes; changes nothing.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    // netlink-packet-route warns about every kernel attribute newer than itself; not ours to fix.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,netlink_packet_route=error"),
    )
    .format_target(false)
    .init();
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsr: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let model = config::load(&config)?;
            println!(
                "{}: ok: interface {}, {} VIPs, {} backends",
                config.display(),
                model.interface,
                model.vips.len(),
                model.vips.iter().map(|v| v.backends.len()).sum::<usize>()
            );
            Ok(())
        }
        Command::Run { config } => {
            let model = config::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                let daemon = Daemon::start(model).await?;
                daemon.run_until(shutdown_signal()).await
            })
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        _ = int.recv() => log::info!("SIGINT: stopping"),
    }
}
