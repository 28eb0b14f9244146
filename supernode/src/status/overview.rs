//! `GET /status`: swarm totals, the chart, the tasks and the hosts.

use std::fmt::{self, Write as _};

use super::html::{bar, bytes, duration, fraction, page, percent, rate, short_id, task_href, tile, Esc};
use super::model::{HostRow, Overview, TaskRow, MAX_HOST_ROWS, MAX_TASK_ROWS};
use super::stats::HostCounters;

/// The overview page.
pub(super) fn render(o: &Overview) -> String {
    let mut body = String::new();
    let _ = write_body(&mut body, o);
    page("Swarm", "overview", o.generated_ms, &body)
}

fn write_body(out: &mut String, o: &Overview) -> fmt::Result {
    tiles(out, o)?;
    super::chart::write(out, &o.series)?;
    tasks(out, o)?;
    hosts(out, o)
}

/// "4.2×" delivered bytes per origin byte, or a dash before any origin byte.
pub(super) fn offload(delivered: u64, origin: u64) -> String {
    if origin == 0 {
        "—".into()
    } else {
        format!("{:.1}×", delivered as f64 / origin as f64)
    }
}

fn tiles(out: &mut String, o: &Overview) -> fmt::Result {
    let t = &o.totals;
    let delivered = t.from_peers + t.from_supernode;
    out.push_str(r#"<div class="tiles">"#);
    tile(
        out,
        "origin-bytes",
        "From origins",
        &bytes(o.origin_bytes),
        &format!("now {}", rate(t.origin_rate)),
        o.origin_bytes,
    )?;
    let sub = format!("{} from peers", percent(fraction(t.from_peers, delivered)));
    tile(out, "delivered-bytes", "Delivered to peers", &bytes(delivered), &sub, delivered)?;
    tile(out, "offload", "Origin offload", &offload(delivered, o.origin_bytes), "delivered ÷ origin bytes", 0)?;
    tile(out, "delivery-rate", "Swarm rate", &rate(t.delivery_rate), "delivered, last 5 s", t.delivery_rate)?;
    let sub = format!("{} of delivered", percent(fraction(o.supernode.uploaded, delivered)));
    tile(out, "supernode-upload-bytes", "Supernode uploads", &bytes(o.supernode.uploaded), &sub, o.supernode.uploaded)?;
    tile(
        out,
        "tasks",
        "Tasks",
        &o.tasks_total.to_string(),
        &format!("up {}", duration(o.uptime_secs)),
        o.tasks_total as u64,
    )?;
    let sub = if o.bad_peers == 0 { "none reported bad".to_owned() } else { format!("{} reported bad", o.bad_peers) };
    tile(out, "peers", "Peers", &o.peers.to_string(), &sub, o.peers as u64)?;
    let sub = if o.cache_quota == 0 { "no quota".to_owned() } else { format!("of {}", bytes(o.cache_quota)) };
    tile(out, "cache-bytes", "Cache", &bytes(o.cache_bytes), &sub, o.cache_bytes)?;
    origin_limits_tile(out, o)?;
    out.push_str("</div>\n");
    Ok(())
}

/// The supernode's origin limits: the bandwidth limit, fetches running and queued.
fn origin_limits_tile(out: &mut String, o: &Overview) -> fmt::Result {
    let l = &o.origin_limits;
    let value = if l.rate == 0 { "no limit".to_owned() } else { rate(l.rate) };
    let cap = if l.max_fetches == 0 { String::new() } else { format!(" of {}", l.max_fetches) };
    let mut sub = format!("{} fetching{cap}", l.running);
    if l.queued > 0 {
        write!(sub, ", {} queued", l.queued)?;
    }
    if l.throttled_secs > 0.0 {
        write!(sub, ", waited {:.0} s", l.throttled_secs)?;
    }
    tile(out, "origin-limit", "Origin limit", &value, &sub, l.rate)
}

/// A host's bandwidth limits, as it registered them: "down 50 MiB/s, up 20 MiB/s".
fn limits_text(c: &HostCounters) -> String {
    let Some(l) = c.limits else { return "—".into() };
    let parts: Vec<String> = [("down", l.download), ("up", l.upload), ("origin", l.origin)]
        .into_iter()
        .filter(|(_, r)| *r > 0)
        .map(|(what, r)| format!("{what} {}", rate(r)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn tasks(out: &mut String, o: &Overview) -> fmt::Result {
    let shown = if o.tasks_total > MAX_TASK_ROWS {
        format!("the {MAX_TASK_ROWS} most recently active of {}", o.tasks_total)
    } else {
        o.tasks_total.to_string()
    };
    write!(out, r#"<section><h2>Tasks <span class="muted">{}</span></h2>"#, Esc(&shown))?;
    if o.tasks.is_empty() {
        out.push_str(r#"<div class="empty">No tasks yet: pull something through a dfdaemon.</div></section>"#);
        return Ok(());
    }
    out.push_str(
        r#"<div class="scroll"><table><thead><tr><th>Task</th><th>State</th><th class="n">Size</th><th class="wide">At the supernode</th><th class="n">Peers</th><th>Peers' progress</th><th class="n wide">Origin</th><th class="n">Delivered</th><th class="n wide">From peers</th><th class="n">Offload</th></tr></thead><tbody>"#,
    );
    for t in &o.tasks {
        task_row(out, t)?;
    }
    out.push_str("</tbody></table></div></section>\n");
    Ok(())
}

fn task_row(out: &mut String, t: &TaskRow) -> fmt::Result {
    let delivered = t.delivered();
    write!(
        out,
        r#"<tr data-task="{id}" data-size="{size}" data-origin-bytes="{origin}" data-delivered="{delivered}" data-peers="{peers}" data-peers-done="{done}"><td class="mono"><a href="{href}" title="{id}">{short}</a></td><td>{phase}</td><td class="n">{size_text}</td><td class="wide">"#,
        id = Esc(&t.id),
        size = t.size.unwrap_or(0),
        origin = t.counters.origin_bytes,
        peers = t.peers,
        done = t.peers_done,
        href = Esc(&task_href(&t.id)),
        short = Esc(&short_id(&t.id)),
        phase = Esc(t.phase),
        size_text = t.size.map(bytes).unwrap_or_else(|| "?".into()),
    )?;
    match t.total_pieces {
        Some(total) => {
            bar(out, fraction(u64::from(t.landed_pieces), u64::from(total)), "origin")?;
            write!(out, "{} / {}", t.landed_pieces, total)?;
        }
        None => write!(out, "{} / ?", t.landed_pieces)?,
    }
    write!(out, r#"</td><td class="n">{} / {}</td><td>"#, t.peers_done, t.peers)?;
    match t.progress() {
        Some(p) => {
            bar(out, p, "")?;
            out.push_str(&percent(p));
        }
        None => out.push('—'),
    }
    write!(
        out,
        r#"</td><td class="n wide">{}</td><td class="n">{}</td><td class="n wide">{}</td><td class="n">{}</td></tr>"#,
        bytes(t.counters.origin_bytes),
        bytes(delivered),
        percent(fraction(t.counters.from_peers, delivered)),
        offload(delivered, t.counters.origin_bytes)
    )
}

fn hosts(out: &mut String, o: &Overview) -> fmt::Result {
    let delivered = o.totals.from_peers + o.totals.from_supernode;
    let shown = if o.hosts_total > MAX_HOST_ROWS {
        format!("the {MAX_HOST_ROWS} busiest of {}", o.hosts_total)
    } else {
        o.hosts_total.to_string()
    };
    write!(
        out,
        r#"<section><h2>Hosts <span class="muted">{}; shares of the {} delivered</span></h2><div class="scroll"><table><thead><tr><th>Host</th><th class="wide">Address</th><th>Uploaded</th><th>Downloaded</th><th class="n">Up</th><th class="n">Down</th><th class="wide">Limits</th><th class="n">Failures</th><th>Status</th></tr></thead><tbody>"#,
        Esc(&shown),
        bytes(delivered)
    )?;
    host_row(out, "supernode", None, &o.supernode, delivered)?;
    for h in &o.hosts {
        host_row(out, &h.id, Some(h), &h.counters, delivered)?;
    }
    out.push_str("</tbody></table></div></section>\n");
    Ok(())
}

fn host_row(out: &mut String, id: &str, row: Option<&HostRow>, c: &HostCounters, delivered: u64) -> fmt::Result {
    let addr = c.addr.map(|a| a.to_string()).unwrap_or_default();
    let name = if row.is_some() { short_id(id) } else { "supernode".to_owned() };
    write!(
        out,
        r#"<tr data-host="{id}" data-addr="{addr}" data-uploaded="{up}" data-downloaded="{down}" data-failures="{fail}" data-reported="{reported}" data-download-limit="{dl}" data-upload-limit="{ul}" data-origin-limit="{ol}"><td class="mono" title="{id}">{name}</td><td class="mono wide">{addr_text}</td><td>"#,
        dl = c.limits.map_or(0, |l| l.download),
        ul = c.limits.map_or(0, |l| l.upload),
        ol = c.limits.map_or(0, |l| l.origin),
        id = Esc(id),
        addr = Esc(&addr),
        up = c.uploaded,
        down = c.downloaded,
        fail = c.upload_failures,
        reported = row.is_some_and(|r| r.strikes.is_some()),
        name = Esc(&name),
        addr_text = if addr.is_empty() { "—".to_owned() } else { Esc(&addr).to_string() },
    )?;
    let up_share = fraction(c.uploaded, delivered);
    bar(out, up_share, if row.is_none() { "sn" } else { "" })?;
    write!(out, r#"{} <span class="muted">{}</span></td><td>"#, bytes(c.uploaded), percent(up_share))?;
    if row.is_some() {
        let down_share = fraction(c.downloaded, delivered);
        bar(out, down_share, "")?;
        write!(out, r#"{} <span class="muted">{}</span>"#, bytes(c.downloaded), percent(down_share))?;
    } else {
        out.push('—');
    }
    write!(
        out,
        r#"</td><td class="n">{}</td><td class="n">{}</td><td class="wide">{}</td><td class="n">"#,
        rate(c.upload_rate),
        rate(c.download_rate),
        if row.is_some() { Esc(&limits_text(c)).to_string() } else { "—".to_owned() }
    )?;
    if c.upload_failures == 0 && c.download_failures == 0 {
        out.push('0');
    } else {
        write!(
            out,
            r#"<span title="as a parent (bad digests) / as a child">{} ({}) / {}</span>"#,
            c.upload_failures, c.bad_digests, c.download_failures
        )?;
    }
    out.push_str("</td><td>");
    match row {
        Some(HostRow { strikes: Some(strikes), .. }) => {
            write!(out, r#"<span class="bad">reported bad</span> <span class="muted">{strikes} strikes</span>"#)?
        }
        Some(_) if !c.connected => out.push_str(r#"<span class="muted">disconnected</span>"#),
        _ => out.push_str(r#"<span class="ok">ok</span>"#),
    }
    out.push_str("</td></tr>");
    Ok(())
}
