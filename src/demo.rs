//! `flowwatch demo`: the daemon against the bundled fake Supply Chain API and scenario, so a
//! newcomer sees transitions, metrics and `/status` within a minute, with no AWS account.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::Shutdown;

use crate::RunOptions;
use crate::api::local_client;
use crate::engine::ExitWhen;
use crate::input::config::{LogFormat, LogSettings, Settings};
use flowwatch_fake::{FakeServer, parse_scenario};

const SCENARIO: &str = include_str!("../config/demo/scenario.toml");

pub fn log_settings() -> LogSettings {
    LogSettings {
        level: "info".into(),
        format: LogFormat::Text,
    }
}

/// Plays the demo scenario; returns when every execution is terminal (or at Ctrl-C with `hold`).
pub async fn run(listen: SocketAddr, hold: bool, shutdown: Shutdown) -> Result<(), String> {
    let scenario = parse_scenario(SCENARIO).map_err(|e| format!("bundled scenario: {e}"))?;
    let fake = FakeServer::start(scenario.clone())
        .await
        .map_err(|e| format!("cannot start the fake API: {e}"))?;
    let dir = std::env::temp_dir().join(format!("flowwatch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config = write_files(&dir, &scenario, &fake.endpoint_url(), listen)?;
    let settings = Settings::load(&config).map_err(|e| e.to_string())?;
    let client = Arc::new(local_client(
        &fake.endpoint_url(),
        settings.polling.request_timeout,
    ));

    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let events_file = settings.events.file.clone();
    let options = RunOptions {
        exit_when: if hold {
            ExitWhen::Never
        } else {
            ExitWhen::ExecutionsDone
        },
        reload_on_sighup: false,
        bound: Some(bound_tx),
        push_queue: None,
        config_reload: None,
        term: None,
    };
    let daemon = tokio::spawn(crate::run_with(settings, client, options, shutdown));
    if let Ok(addr) = bound_rx.await {
        say(format_args!(
            "\nflowwatch demo: a fake Supply Chain API runs at {}; flowwatch watches {} executions.\n\
             While it runs, look at:\n  http://{addr}/ in a browser: the status page (an overdue run shows after 30 s)\n  \
             curl http://{addr}/metrics\n  curl http://{addr}/status\n  curl http://{addr}/readyz\n\
             Events (CloudEvents JSON Lines) print on stdout and go to {}.\n",
            fake.endpoint_url(),
            scenario.executions.len(),
            events_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ));
    }
    let finish = daemon
        .await
        .map_err(|e| format!("the daemon task failed: {e}"))?
        .map_err(|e| e.to_string())?;

    let stats = fake.stats();
    let events = events_file
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let overdue = events
        .lines()
        .filter(|line| line.contains(r#""type":"flowwatch.execution.overdue""#))
        .count();
    say(format_args!(
        "\nflowwatch demo finished in {:.1}s: {} events ({overdue} overdue run), {} API calls made, {} throttles absorbed; {}.\n\
         `flowwatch run --exit-when-done` would exit {} here.",
        fake.elapsed().as_secs_f64(),
        events.lines().count(),
        stats.requests,
        stats.throttled,
        finish.describe(),
        finish.exit_code(),
    ));
    fake.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Writes the demo's config and watchlist: a `[[flow]]` entry for each scripted flow, and an
/// `[[execution]]` entry for every scripted execution of other flows.
fn write_files(
    dir: &std::path::Path,
    scenario: &flowwatch_fake::Scenario,
    endpoint: &str,
    listen: SocketAddr,
) -> Result<PathBuf, String> {
    let mut watchlist = String::from("# Written by `flowwatch demo`.\n");
    for f in &scenario.flows {
        watchlist.push_str(&format!(
            "\n[[flow]]\ninstance_id = \"{}\"\nflow_name = \"{}\"\nsince = \"8d\"\nexpect_success_within = \"26h\"\nlabels = {{ team = \"demo\" }}\n",
            f.instance_id, f.flow_name
        ));
    }
    let not_by_flow = |e: &&flowwatch_fake::ScriptedExecution| {
        !scenario
            .flows
            .iter()
            .any(|f| f.instance_id == e.instance_id && f.flow_name == e.flow_name)
    };
    for e in scenario.executions.iter().filter(not_by_flow) {
        watchlist.push_str(&format!(
            "\n[[execution]]\ninstance_id = \"{}\"\nflow_name = \"{}\"\nexecution_id = \"{}\"\nlabels = {{ team = \"demo\" }}\n",
            e.instance_id, e.flow_name, e.execution_id
        ));
    }
    let config = format!(
        "# Written by `flowwatch demo`.\nwatchlist = \"watchlist.toml\"\n\n[server]\nlisten = \"{listen}\"\n\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\n\
         [polling]\ninitial_interval = \"1s\"\nmax_interval = \"4s\"\nmultiplier = 2.0\nmax_requests_per_second = 5.0\n\
         max_in_flight = 4\nrequest_timeout = \"5s\"\nnot_found_grace = \"30s\"\nretain_terminal = \"5m\"\n\n\
         [discovery]\ninterval = \"5s\"\n\n[flow_health]\noverdue_min = \"20s\"\n\n\
         [state]\npath = \"{dir}\"\n\n[events]\nstdout = true\nfile = \"{dir}/events.jsonl\"\n",
        dir = dir.display()
    );
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok::<PathBuf, String>(path)
    };
    write("watchlist.toml", &watchlist)?;
    write("flowwatch.toml", &config)
}

/// Tells the person running the demo; a closed stderr loses the text rather than panicking.
fn say(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{text}");
}
