//! A standby replica's answers. It runs no engine while another replica leads, so this answers
//! the engine's commands in its place (an empty `/status` and status page; a reload is taken
//! at takeover, when the files are read again), keeps `/livez` and the systemd watchdog fed,
//! and makes `/readyz` say `standby`.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::engine::{Command, Overview, ReloadSummary, StatusView};
use crate::input::config::FlowHealthSettings;
use crate::output::health::{HEARTBEAT, Health};
use crate::systemd::Watchdog;

/// Answers `commands` until `stop` resolves.
pub async fn answer(
    mut commands: mpsc::Receiver<Command>,
    health: Arc<Health>,
    rules: FlowHealthSettings,
    stop: impl Future<Output = ()>,
) {
    health.set_standby();
    health.set_state_restored();
    let mut watchdog = Watchdog::from_env();
    let mut beat = tokio::time::interval(HEARTBEAT.min(watchdog.period().map_or(HEARTBEAT, |p| {
        (p / 2).max(std::time::Duration::from_millis(10))
    })));
    let mut stop = std::pin::pin!(stop);
    loop {
        health.beat();
        watchdog.tick();
        tokio::select! {
            () = &mut stop => return,
            _ = beat.tick() => {}
            Some(command) = commands.recv() => match command {
                Command::Status(query, reply) => {
                    let _ = reply.send(StatusView::nothing_watched(&query));
                }
                Command::Overview(_, reply) => {
                    let _ = reply.send(Overview::nothing_watched(&rules));
                }
                Command::Replace(_, _, reply) => {
                    let _ = reply.send(ReloadSummary::default());
                }
                Command::ReopenSinks => {}
            },
        }
    }
}
