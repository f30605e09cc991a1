//! The command line (DESIGN §4): `run`, `check-config`, `demo`, `--version`, `--help`.

use std::path::PathBuf;

use clap::Parser;

use flowwatch::DEFAULT_CONFIG_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "flowwatch",
    version,
    about = "Watches AWS Supply Chain data integration flow executions until they succeed or fail",
    after_help = "Exit codes: 0 success, 1 a watched execution failed (run --exit-when-done), \
                  2 invalid config or usage, 3 fatal runtime error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Subcommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Run the daemon: poll every watchlist entry until it is terminal, serving metrics,
    /// health and status over HTTP.
    Run {
        /// The config file.
        #[arg(long, env = "FLOWWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Exit once every execution is terminal: 0 if all SUCCEEDED, 1 if any FAILED or NOT_FOUND.
        #[arg(long)]
        exit_when_done: bool,
    },
    /// Validate the config and the watchlist, print a summary, and exit (2 on any problem).
    CheckConfig {
        /// The config file.
        #[arg(long, env = "FLOWWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    #[cfg(feature = "demo")]
    /// Run flowwatch against a bundled local fake of the Supply Chain API (no AWS account
    /// needed): a few executions succeed, one fails, and the fake throttles.
    Demo {
        /// Where flowwatch serves /metrics, /status, /livez and /readyz during the demo.
        #[arg(long, default_value = "127.0.0.1:9726")]
        listen: std::net::SocketAddr,
        /// Keep serving after every execution is terminal, until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
}
