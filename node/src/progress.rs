//! Progress of transfers on a terminal: events and bytes done, total, rate
//! and ETA, one line per connection while events move, left on screen when
//! done (a mule's visits read as a log). Nothing is drawn unless the CLI
//! turned it on because stderr is a terminal.

use crate::driver::Driver;
use crate::link::Link;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bars on stderr when it is a terminal; `None` otherwise.
pub fn terminal() -> Option<MultiProgress> {
    std::io::stderr()
        .is_terminal()
        .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)))
}

/// Follows `link` until it closes, if this node shows progress.
pub fn track(driver: &Arc<Driver>, link: &Arc<Link>) {
    if let Some(multi) = driver.ctx.progress.get() {
        driver
            .ctx
            .tasks
            .spawn(follow(driver.clone(), multi.clone(), link.clone()));
    }
}

const TEMPLATE: &str = "{prefix:>14} [{bar:24}] {pos}/{len} events  {msg}";

fn style() -> ProgressStyle {
    // A constant template; the unit test below checks that it parses.
    ProgressStyle::with_template(TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

struct Shown {
    bar: ProgressBar,
    since: Instant,
    bytes_from: u64,
    done_from: u64,
}

fn bytes(link: &Link) -> u64 {
    let s = link.conn.stats();
    s.udp_rx.bytes + s.udp_tx.bytes
}

/// Events moved both ways on this connection, and those still to move as
/// far as the core knows.
fn counts(driver: &Arc<Driver>, link: &Link) -> (u64, u64) {
    match driver.view(link.id()) {
        Some(v) => {
            let done = v.stats.events_received + v.stats.events_sent;
            (done, done + v.we_lack + v.they_lack)
        }
        None => (0, 0),
    }
}

/// Bytes moved and their rate, and the time left at the rate events move.
fn message(shown: &Shown, link: &Link, done: u64, total: u64) -> String {
    let b = bytes(link).saturating_sub(shown.bytes_from);
    let secs = shown.since.elapsed().as_secs_f64().max(0.001);
    let rate = HumanBytes((b as f64 / secs) as u64);
    let moved = done.saturating_sub(shown.done_from);
    let eta = match moved {
        0 => "ETA unknown".to_string(),
        n => format!(
            "ETA {:.0?}",
            Duration::from_secs_f64(secs * (total.saturating_sub(done)) as f64 / n as f64)
        ),
    };
    format!("{} at {rate}/s  {eta}", HumanBytes(b))
}

async fn follow(driver: Arc<Driver>, multi: MultiProgress, link: Arc<Link>) {
    let mut shown: Option<Shown> = None;
    loop {
        let closed = tokio::select! {
            _ = link.conn.closed() => true,
            _ = tokio::time::sleep(Duration::from_millis(250)) => false,
        };
        let (done, total) = counts(&driver, &link);
        if shown.is_none() && done < total && !closed {
            let bar = multi.add(ProgressBar::new(total).with_style(style()));
            bar.set_prefix(link.peer.name.clone());
            shown = Some(Shown {
                bar,
                since: Instant::now(),
                bytes_from: bytes(&link),
                done_from: done,
            });
        }
        if let Some(s) = &shown {
            s.bar.set_length(total);
            s.bar.set_position(done.min(total));
            if done >= total {
                let b = bytes(&link).saturating_sub(s.bytes_from);
                s.bar
                    .finish_with_message(format!("{} in {:.1?}", HumanBytes(b), s.since.elapsed()));
                shown = None;
            } else if closed {
                s.bar
                    .abandon_with_message(format!("{}, connection lost", message(s, &link, done, total)));
                shown = None;
            } else {
                s.bar.set_message(message(s, &link, done, total));
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_template_parses() {
        assert!(indicatif::ProgressStyle::with_template(super::TEMPLATE).is_ok());
    }
}
