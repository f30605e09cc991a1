//! The flowwatch binary: parses the command line, sets up logging and signals, calls the
//! library, and maps the result to an exit code.

use std::path::Path;
use std::process::ExitCode;

mod cli;

use clap::Parser;
use flowwatch::{Finish, RunOptions, Settings};

use crate::cli::{Cli, Command};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Run {
            config,
            exit_when_done,
        } => run(&config, exit_when_done),
        Command::Demo { listen, hold } => {
            flowwatch::init_logging(&flowwatch::demo::log_settings());
            block_on(|shutdown| async move {
                match flowwatch::demo::run(listen, hold, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("flowwatch demo: {e}");
                        ExitCode::from(3)
                    }
                }
            })
        }
    }
}

fn check_config(config: &Path) -> ExitCode {
    match flowwatch::check_config(config) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{problems}");
            ExitCode::from(2)
        }
    }
}

fn run(config: &Path, exit_when_done: bool) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(2);
        }
    };
    flowwatch::init_logging(&settings.log);
    block_on(|shutdown| async move {
        let options = RunOptions {
            exit_when_done,
            reload_on_sighup: true,
            bound: None,
        };
        match flowwatch::run(settings, options, shutdown).await {
            Ok(Finish::Shutdown | Finish::AllDone { failed: false }) => ExitCode::SUCCESS,
            Ok(Finish::AllDone { failed: true }) => ExitCode::from(1),
            Err(e) => {
                tracing::error!("flowwatch cannot run: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}

/// Runs `body` on a multi-threaded runtime, with SIGTERM and SIGINT cancelling its token.
fn block_on<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowwatch: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        body(shutdown).await
    })
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
