//! `sim`: drives the supernode's real scheduler with simulated hosts and reports completion time
//! over the distribution lower bound, and the supernode's upload in multiples of the image.
//!
//! ```text
//! cargo run --release -p damselfly-sim --bin sim -- --hosts 1000,10000
//! ```

use std::path::PathBuf;

use clap::Parser;
use damselfly_sim::report::Table;
use damselfly_sim::sim::{self, SimConfig};
use damselfly_sim::stats::summarize;
use damselfly_sim::units::{fmt_bytes, fmt_rate, parse_rate, parse_size};

#[derive(Parser, Debug)]
#[command(about = "Simulate a swarm driven by the supernode's real scheduler")]
struct Args {
    /// Host counts to simulate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    hosts: Vec<usize>,
    /// Layer sizes of the image (one task each), comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "256MiB")]
    layers: Vec<u64>,
    /// Host upload rates, comma-separated; each pairs with the --host-down at the same position
    /// (a missing one repeats the last) to make one host profile.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate, default_value = "1gbit,250mbit")]
    host_up: Vec<f64>,
    /// Host download rates, comma-separated (see --host-up).
    #[arg(long, value_delimiter = ',', value_parser = parse_rate, default_value = "1gbit,1gbit")]
    host_down: Vec<f64>,
    /// Supernode upload (and download) rate.
    #[arg(long, value_parser = parse_rate, default_value = "10gbit")]
    sn_up: f64,
    /// Origin upload rate (to the supernode).
    #[arg(long, value_parser = parse_rate, default_value = "10gbit")]
    origin_up: f64,
    /// Round-trip time between nodes, milliseconds.
    #[arg(long, default_value_t = 1.0)]
    rtt_ms: f64,
    /// Extra one-way delay, milliseconds, of a message crossing a link that carries a flow (its
    /// standing queue; the netns benchmark's tbf holds 50 ms).
    #[arg(long, default_value_t = 0.0)]
    queue_ms: f64,
    /// Fraction of each link's rate that carries payload (QUIC/UDP/IP headers, ACKs).
    #[arg(long, default_value_t = 1.0)]
    wire_efficiency: f64,
    /// Time, milliseconds, from a piece's last byte to its report (hash, write, report).
    #[arg(long, default_value_t = 0.0)]
    piece_overhead_ms: f64,
    /// Supernode download rate (from the origin) [default: --sn-up].
    #[arg(long, value_parser = parse_rate)]
    sn_down: Option<f64>,
    /// Scheduler: a piece in flight on a parent-child link may queue this many behind it
    /// (default: the supernode's).
    #[arg(long)]
    link_depth: Option<usize>,
    /// Hosts join at uniformly random times within this many seconds (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    join_spread: f64,
    /// Each registration of a host (one per layer) reaches the supernode up to this many
    /// milliseconds later, at random (0: together, in host order). A real host's downloads of an
    /// image's blobs are separate requests: in the netns benchmark the first host to register
    /// differs from blob to blob.
    #[arg(long, default_value_t = 20.0)]
    register_jitter_ms: f64,
    /// Scheduler: download window per peer (default: the supernode's).
    #[arg(long)]
    window: Option<usize>,
    /// Scheduler: max concurrent uploads per peer (default: the supernode's).
    #[arg(long)]
    max_uploads: Option<usize>,
    /// Scheduler: max concurrent uploads of the supernode (default: the supernode's).
    #[arg(long)]
    sn_uploads: Option<usize>,
    /// Schedule every blob as a task of its own, not the image's blobs as one swarm (the
    /// scheduler's `image_swarms` off).
    #[arg(long)]
    no_image_swarm: bool,
    /// Print the scheduler's cost per event kind.
    #[arg(long)]
    profile: bool,
    /// Interval of the scheduler's Tick event, seconds (the supernode uses 0.5).
    #[arg(long, default_value_t = 0.5)]
    tick: f64,
    /// Seed of the scheduler's PRNG and of the join times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the markdown results here as well as to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write every result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn scheduler_config(args: &Args) -> damselfly_scheduler::SchedulerConfig {
    let d = damselfly_scheduler::SchedulerConfig::default();
    damselfly_scheduler::SchedulerConfig {
        seed: args.seed,
        window_per_peer: args.window.unwrap_or(d.window_per_peer),
        max_uploads_per_peer: args.max_uploads.unwrap_or(d.max_uploads_per_peer),
        max_supernode_uploads: args.sn_uploads.unwrap_or(d.max_supernode_uploads),
        link_depth: args.link_depth.unwrap_or(d.link_depth),
        image_swarms: !args.no_image_swarm,
        ..d
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // `RUST_LOG=damselfly_sched=debug` prints the scheduler's trace, one line per assignment
    // and finish with the simulated time, as the supernode prints it in the netns benchmark.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let profiles = args.host_up.len().max(args.host_down.len());
    let mut table = Table::new([
        "hosts",
        "host up / down",
        "bound (s)",
        "binding term",
        "p50 ÷ bound",
        "p99 ÷ bound",
        "max ÷ bound",
        "supernode upload ÷ F",
        "origin ÷ F",
        "sched µs/event",
        "events",
        "wall (s)",
    ]);
    let mut all = Vec::new();
    for p in 0..profiles {
        for &hosts in &args.hosts {
            all.push(simulate(&args, sim_config(&args, hosts, p), &mut table)?);
        }
    }
    let layers: Vec<String> = args.layers.iter().map(|&l| fmt_bytes(l as f64)).collect();
    let md = format!(
        "Image: {} ({}), supernode {} up, origin {} up, RTT {} ms, queue on a busy link {} ms, wire efficiency {}, per-piece cost {} ms, joins spread over {} s, registrations of a host spread over {} ms, seed {}.\n\n{}",
        fmt_bytes(args.layers.iter().sum::<u64>() as f64),
        layers.join(" + "),
        fmt_rate(args.sn_up),
        fmt_rate(args.origin_up),
        args.rtt_ms,
        args.queue_ms,
        args.wire_efficiency,
        args.piece_overhead_ms,
        args.join_spread,
        args.register_jitter_ms,
        args.seed,
        table.to_markdown()
    );
    println!("{md}");
    if let Some(path) = args.out {
        std::fs::write(&path, &md)?;
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&all)?)?;
    }
    Ok(())
}

/// The simulation of `hosts` hosts with the `p`-th host rate profile (a list shorter than the
/// other repeats its last rate).
fn sim_config(args: &Args, hosts: usize, p: usize) -> SimConfig {
    let pick = |v: &[f64], i: usize| v.get(i).or(v.last()).copied().unwrap_or(125e6);
    SimConfig {
        hosts,
        layers: args.layers.clone(),
        host_up: pick(&args.host_up, p),
        host_down: pick(&args.host_down, p),
        sn_up: args.sn_up,
        sn_down: args.sn_down.unwrap_or(args.sn_up),
        origin_up: args.origin_up,
        rtt: args.rtt_ms / 1000.0,
        queue_delay: args.queue_ms / 1000.0,
        wire_efficiency: args.wire_efficiency,
        piece_overhead: args.piece_overhead_ms / 1000.0,
        join_spread: args.join_spread,
        register_jitter: args.register_jitter_ms / 1000.0,
        tick: args.tick,
        seed: args.seed,
        scheduler: scheduler_config(args),
        ..SimConfig::default()
    }
}

/// Runs one simulation, adds its row to `table`, prints its summary (and its scheduler profile
/// with `--profile`) and returns its JSON record.
fn simulate(args: &Args, cfg: SimConfig, table: &mut Table) -> anyhow::Result<serde_json::Value> {
    let bound = cfg.bound();
    eprintln!(
        "simulating {} hosts, image {}, hosts {} up / {} down ...",
        cfg.hosts,
        fmt_bytes(cfg.image_bytes() as f64),
        fmt_rate(cfg.host_up),
        fmt_rate(cfg.host_down)
    );
    let r = sim::run(cfg.clone());
    let done: Vec<f64> = r.completion.iter().flatten().map(|c| c / bound.seconds).collect();
    let unfinished = r.completion.len() - done.len();
    let s = summarize(&done);
    let f = cfg.image_bytes() as f64;
    let term = if bound.seconds == bound.total_upload {
        "N·F/(u_s+Σu_i)"
    } else if bound.seconds == bound.slowest_download {
        "F/d_min"
    } else {
        "F/u_s"
    };
    let per_event = r.scheduler_wall.as_secs_f64() * 1e6 / r.scheduler_events.max(1) as f64;
    let max = if unfinished > 0 { format!("{unfinished} unfinished") } else { format!("{:.3}", s.max) };
    table.row([
        cfg.hosts.to_string(),
        format!("{} / {}", fmt_rate(cfg.host_up), fmt_rate(cfg.host_down)),
        format!("{:.3}", bound.seconds),
        term.to_string(),
        format!("{:.3}", s.p50),
        format!("{:.3}", s.p99),
        max,
        format!("{:.3}", r.supernode_upload as f64 / f),
        format!("{:.2}", r.origin_upload as f64 / f),
        format!("{per_event:.1}"),
        r.scheduler_events.to_string(),
        format!("{:.1}", r.wall.as_secs_f64()),
    ]);
    eprintln!(
        "  p50 {:.3}  p99 {:.3}  max {:.3} x bound; supernode {:.3} F; {} events, {:.1} s wall",
        s.p50,
        s.p99,
        s.max,
        r.supernode_upload as f64 / f,
        r.scheduler_events,
        r.wall.as_secs_f64()
    );
    if args.profile {
        for (kind, n, took) in &r.scheduler_by_kind {
            eprintln!(
                "  {kind:>14}: {n:>9} events, {:>8.1} µs each, {:>7.2} s total",
                took.as_secs_f64() * 1e6 / *n as f64,
                took.as_secs_f64()
            );
        }
    }
    let mut result = serde_json::to_value(&r)?;
    if let Some(obj) = result.as_object_mut() {
        obj.remove("completion"); // one number per host: too big to keep
    }
    Ok(serde_json::json!({ "config": format!("{cfg:?}"), "bound": bound, "summary": s, "result": result }))
}
