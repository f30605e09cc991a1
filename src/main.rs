//! The flowwatch binary: parses the command line, sets up logging and signals, calls the
//! library, and maps the result to an exit code.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

mod cli;

use clap::Parser;
use flowwatch::{ExitWhen, RunOptions, Settings, Shutdown};

use crate::cli::{Cli, Subcommand};

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
        Subcommand::CheckConfig { config } => check_config(&config),
        Subcommand::Run {
            config,
            exit_when_done,
        } => run(&config, exit_when_done),
        #[cfg(feature = "demo")]
        Subcommand::Demo { listen, hold } => {
            flowwatch::init_logging(&flowwatch::demo::log_settings());
            block_on(|shutdown| async move {
                match flowwatch::demo::run(listen, hold, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        say_err(format_args!("flowwatch demo: {e}"));
                        ExitCode::from(3)
                    }
                }
            })
        }
    }
}

fn check_config(config: &Path) -> ExitCode {
    block_on(|_shutdown| async move { check_config_in(config).await })
}

async fn check_config_in(config: &Path) -> ExitCode {
    match flowwatch::check_config(config).await {
        Ok(summary) => {
            let _ = writeln!(std::io::stdout(), "{summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            say_err(format_args!("{problems}"));
            ExitCode::from(2)
        }
    }
}

fn run(config: &Path, exit_when_done: bool) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(problems) => {
            say_err(format_args!("{problems}"));
            return ExitCode::from(2);
        }
    };
    flowwatch::init_logging(&settings.log);
    block_on(|shutdown| async move {
        let options = RunOptions {
            exit_when: if exit_when_done {
                ExitWhen::AllDone
            } else {
                ExitWhen::Never
            },
            reload_on_sighup: true,
            bound: None,
            push_queue: None,
            config_reload: None,
            term: None,
        };
        match flowwatch::run(settings, options, shutdown).await {
            Ok(finish) => ExitCode::from(finish.exit_code()),
            Err(e) => {
                tracing::error!("flowwatch cannot run: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}

/// Runs `body` on a current-thread runtime, with SIGTERM and SIGINT requesting its shutdown.
/// flowwatch waits on the network almost all the time: on one thread an answer wakes the engine
/// directly, where on a pool of workers most answers woke another thread first.
fn block_on<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say_err(format_args!(
                "flowwatch: cannot start the async runtime: {e}"
            ));
            return ExitCode::from(3);
        }
    };
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        tokio::spawn(flowwatch::on_signals(shutdown.clone()));
        body(shutdown).await
    })
}

/// Writes a line to stderr. A closed stderr (its reader gone) loses the line rather than
/// panicking, which would turn the exit code into 101.
fn say_err(text: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{text}");
}
