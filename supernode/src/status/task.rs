//! `GET /status/task/{id}`: one task, and which host holds and served which share of it.

use std::fmt::{self, Write as _};

use super::html::{bar, bytes, fraction, page, percent, short_id, tile, Esc};
use super::model::{TaskDetail, TaskPeer};
use super::overview::offload;

/// Most hosts drawn as their own segment of the "who served it" bar; the rest are one.
const SEGMENTS: usize = 12;

/// The task page.
pub(super) fn render(d: &TaskDetail) -> String {
    let mut body = String::new();
    let _ = write_body(&mut body, d);
    page(&format!("Task {}", short_id(&d.task.id)), "task", d.generated_ms, &body)
}

/// The page for a task the scheduler does not know (any more).
pub(super) fn render_unknown(id: &str) -> String {
    let body = format!(
        r#"<section><h2>Unknown task</h2><p class="mono">{}</p><p>The scheduler does not know this task (it finished and every peer left, or it never ran). <a href="/status">Back to the swarm</a>.</p></section>"#,
        Esc(id)
    );
    page("Unknown task", "task", 0, &body)
}

fn write_body(out: &mut String, d: &TaskDetail) -> fmt::Result {
    let t = &d.task;
    write!(
        out,
        r#"<p><a href="/status">← Swarm</a></p><h2 class="mono" style="overflow-wrap:anywhere" data-task="{}">{}</h2>"#,
        Esc(&t.id),
        Esc(&t.id)
    )?;
    if let Some(failure) = &d.failure {
        write!(out, r#"<p class="bad">Failed: {}</p>"#, Esc(failure))?;
    }
    let delivered = t.delivered();
    out.push_str(r#"<div class="tiles">"#);
    let size = t.size.map(bytes).unwrap_or_else(|| "?".into());
    let pieces = match (t.total_pieces, t.piece_size) {
        (Some(n), Some(s)) => format!("{n} pieces of {}", bytes(u64::from(s))),
        _ => "length not known yet".into(),
    };
    tile(out, "size", "Size", &size, &pieces, t.size.unwrap_or(0))?;
    let landed = format!("{} / {}", t.landed_pieces, t.total_pieces.map_or("?".into(), |n| n.to_string()));
    tile(out, "landed", "At the supernode", &landed, t.phase, u64::from(t.landed_pieces))?;
    let done = format!("{} / {}", t.peers_done, t.peers);
    let progress = t.progress().map_or("—".into(), |p| format!("{} average progress", percent(p)));
    tile(out, "peers-done", "Peers done", &done, &progress, t.peers_done as u64)?;
    let sub = format!("{} fetched from the origin", bytes(t.counters.origin_bytes));
    tile(
        out,
        "offload",
        "Origin offload",
        &offload(delivered, t.counters.origin_bytes),
        &sub,
        t.counters.origin_bytes,
    )?;
    let sub = format!("{} from peers", percent(fraction(t.counters.from_peers, delivered)));
    tile(out, "delivered-bytes", "Delivered", &bytes(delivered), &sub, delivered)?;
    let sub = format!("{} in flight", t.counters.in_flight);
    tile(out, "failures", "Failure reports", &t.counters.failures.to_string(), &sub, t.counters.failures)?;
    out.push_str("</div>\n");
    served(out, d, delivered)?;
    peers(out, d, delivered)
}

/// A stacked bar: each host's share of the bytes delivered in this task.
fn served(out: &mut String, d: &TaskDetail, delivered: u64) -> fmt::Result {
    out.push_str(r#"<section><h2>Who served it</h2>"#);
    if delivered == 0 {
        out.push_str(r#"<div class="empty">Nothing delivered yet.</div></section>"#);
        return Ok(());
    }
    let mut uploaders: Vec<(&str, u64)> =
        d.peers.iter().filter(|p| p.uploaded > 0).map(|p| (p.id.as_str(), p.uploaded)).collect();
    uploaders.sort_by_key(|u| std::cmp::Reverse(u.1));
    let rest: u64 = uploaders.iter().skip(SEGMENTS).map(|u| u.1).sum();
    uploaders.truncate(SEGMENTS);
    out.push_str(r#"<div class="stack">"#);
    let mut legend = String::new();
    let mut segment = |out: &mut String, name: &str, bytes_: u64, colour: &str| -> fmt::Result {
        let share = fraction(bytes_, delivered);
        write!(
            out,
            r#"<span style="width:{:.2}%;background:{colour}" title="{}: {} ({})"></span>"#,
            share * 100.0,
            Esc(name),
            bytes(bytes_),
            percent(share)
        )?;
        write!(
            legend,
            r#"<span class="key" style="color:{colour}"><span>{} {}</span></span>"#,
            Esc(&short_id(name)),
            percent(share)
        )
    };
    segment(out, "supernode", d.supernode_uploaded, "var(--sn)")?;
    for (i, (id, up)) in uploaders.iter().enumerate() {
        segment(out, id, *up, &format!("hsl({} 60% 50%)", 140 + i * 37))?;
    }
    if rest > 0 {
        segment(out, "other peers", rest, "var(--muted)")?;
    }
    write!(out, r#"</div><div class="legend">{legend}</div></section>"#)
}

fn peers(out: &mut String, d: &TaskDetail, delivered: u64) -> fmt::Result {
    let total = d.task.total_pieces;
    write!(
        out,
        r#"<section><h2>Hosts <span class="muted">{} in the task; each host's share of the pieces and of the bytes delivered</span></h2>"#,
        d.peers.len()
    )?;
    if d.peers.is_empty() {
        out.push_str(r#"<div class="empty">No peer is in this task now.</div></section>"#);
        return Ok(());
    }
    out.push_str(
        r#"<div class="scroll"><table><thead><tr><th>Host</th><th class="wide">Address</th><th>Holds</th><th class="n">In flight</th><th>Downloaded</th><th>Uploaded</th><th>Status</th></tr></thead><tbody>"#,
    );
    for p in &d.peers {
        peer_row(out, p, total, delivered)?;
    }
    out.push_str("</tbody></table></div></section>\n");
    Ok(())
}

fn peer_row(out: &mut String, p: &TaskPeer, total: Option<u32>, delivered: u64) -> fmt::Result {
    write!(
        out,
        r#"<tr data-host="{id}" data-addr="{addr}" data-pieces="{held}" data-uploaded="{up}" data-downloaded="{down}"><td class="mono" title="{id}">{short}</td><td class="mono wide">{addr}</td><td>"#,
        id = Esc(&p.id),
        addr = Esc(&p.addr),
        held = p.pieces_held,
        up = p.uploaded,
        down = p.downloaded,
        short = Esc(&short_id(&p.id)),
    )?;
    match total {
        Some(n) => {
            bar(out, fraction(u64::from(p.pieces_held), u64::from(n)), "")?;
            write!(out, "{} / {n}", p.pieces_held)?;
        }
        None => write!(out, "{}", p.pieces_held)?,
    }
    write!(out, r#"</td><td class="n">{}</td><td>{}</td><td>"#, p.in_flight, bytes(p.downloaded))?;
    let share = fraction(p.uploaded, delivered);
    bar(out, share, "")?;
    write!(out, r#"{} <span class="muted">{}</span></td><td>"#, bytes(p.uploaded), percent(share))?;
    if p.bad {
        out.push_str(r#"<span class="bad">reported bad</span>"#);
    } else if p.done {
        out.push_str(r#"<span class="ok">seeding</span>"#);
    } else {
        out.push_str("downloading");
    }
    out.push_str("</td></tr>");
    Ok(())
}
