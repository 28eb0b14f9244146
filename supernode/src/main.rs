//! `supernode`: parses flags, loads config, starts tracing and runs [`supernode::run`].

use supernode::SupernodeConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    damselfly_net::telemetry::init_tracing("info");
    let cmd = clap::Command::new("supernode").version(env!("CARGO_PKG_VERSION"));
    let config: SupernodeConfig = damselfly_net::config::parse(cmd, std::env::args_os())?;
    supernode::run(config, damselfly_net::shutdown::on_signal()).await
}
