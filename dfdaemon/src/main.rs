//! `dfdaemon`: parses flags, loads config, starts tracing and runs [`dfdaemon::run`].
//! `dfdaemon configure ENGINE ...` writes a container engine's mirror configuration instead
//! ([`configure`]).

use dfdaemon::DaemonConfig;

mod configure;

/// After the flags in `dfdaemon --help`.
const AFTER_HELP: &str = "Point a container engine at this daemon: dfdaemon configure containerd|crio|podman|docker \
                          (see dfdaemon configure --help)";

fn main() -> anyhow::Result<()> {
    // `dfdaemon configure ...` is a subcommand; anything else runs the daemon, whose flags stay
    // exactly as they were.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "configure") {
        std::process::exit(configure::main(&argv[1..]));
    }
    serve(argv)
}

#[tokio::main]
async fn serve(argv: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    damselfly_net::telemetry::init_tracing("info");
    let cmd = clap::Command::new("dfdaemon").version(env!("CARGO_PKG_VERSION")).after_help(AFTER_HELP);
    let config: DaemonConfig = damselfly_net::config::parse(cmd, argv)?;
    dfdaemon::run(config, damselfly_net::shutdown::on_signal()).await
}
