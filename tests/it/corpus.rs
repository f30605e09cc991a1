//! The bad-input corpus (tests/corpus/cases.toml): every case must make both `check-config` and
//! `run` exit 2 with its expected, located error, and never panic.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

#[derive(Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    config: Option<String>,
    watchlist: Option<String>,
    #[serde(default)]
    no_config: bool,
    #[serde(default)]
    no_watchlist: bool,
    #[serde(default)]
    config_is_dir: bool,
    #[serde(default)]
    watchlist_is_dir: bool,
    state_db: Option<String>,
    /// `{dir}/state/flowwatch.db` is a symlink to this path.
    state_db_symlink: Option<String>,
    /// SQL run on `{dir}/state/flowwatch.db` (a new flowwatch database when `state_db_flowwatch`).
    state_db_sql: Option<String>,
    #[serde(default)]
    state_db_flowwatch: bool,
    /// More files in `{dir}`, by name.
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// Symlinks in `{dir}`: name to target.
    #[serde(default)]
    symlinks: BTreeMap<String, String>,
    /// FIFOs in `{dir}` (in place of the config or watchlist when named so).
    #[serde(default)]
    fifos: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    expect: Vec<String>,
}

const DEFAULT_CONFIG: &str = r#"
watchlist = "watchlist.toml"
[server]
listen = "127.0.0.1:0"
[aws]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:9"
[state]
path = "{dir}/state"
[events]
stdout = false
file = "{dir}/events.jsonl"
"#;

const DEFAULT_WATCHLIST: &str = r#"
[[execution]]
instance_id = "8850c54e-e187-4fa7-89d4-6370f165174d"
flow_name = "daily-orders"
execution_id = "a1b2c3d4-0000-4000-8000-000000000001"
"#;

fn lay_out(case: &Case, dir: &Path) {
    let fill = |text: &str| text.replace("{dir}", &dir.display().to_string());
    let config = dir.join("flowwatch.toml");
    let watchlist = dir.join("watchlist.toml");
    if case.config_is_dir {
        std::fs::create_dir(&config).expect("dir");
    } else if !case.no_config {
        std::fs::write(
            &config,
            fill(case.config.as_deref().unwrap_or(DEFAULT_CONFIG)),
        )
        .expect("config");
    }
    if case.watchlist_is_dir {
        std::fs::create_dir(&watchlist).expect("dir");
    } else if !case.no_watchlist {
        std::fs::write(
            &watchlist,
            fill(case.watchlist.as_deref().unwrap_or(DEFAULT_WATCHLIST)),
        )
        .expect("watchlist");
    }
    if let Some(db) = &case.state_db {
        std::fs::create_dir_all(dir.join("state")).expect("state dir");
        std::fs::write(dir.join("state").join("flowwatch.db"), db).expect("db");
    }
    let db = dir.join("state").join("flowwatch.db");
    if case.state_db_flowwatch {
        drop(flowwatch::testing::Store::open(&dir.join("state")).expect("a new state database"));
    }
    if let Some(sql) = &case.state_db_sql {
        std::fs::create_dir_all(dir.join("state")).expect("state dir");
        rusqlite::Connection::open(&db)
            .and_then(|c| c.execute_batch(sql))
            .expect("the case's SQL");
    }
    for (name, text) in &case.files {
        std::fs::write(dir.join(name), fill(text)).expect("file");
    }
    for name in &case.fifos {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let made = Command::new("mkfifo").arg(&path).status().expect("mkfifo");
        assert!(made.success(), "mkfifo {}", path.display());
    }
    for (name, target) in &case.symlinks {
        std::os::unix::fs::symlink(fill(target), dir.join(name)).expect("symlink");
    }
    if let Some(target) = &case.state_db_symlink {
        std::fs::create_dir_all(dir.join("state")).expect("state dir");
        std::os::unix::fs::symlink(fill(target), dir.join("state").join("flowwatch.db"))
            .expect("symlink");
    }
}

fn flowwatch(case: &Case, dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowwatch"));
    cmd.args(args)
        .arg("--config")
        .arg(dir.join("flowwatch.toml"));
    for (name, _) in std::env::vars() {
        if flowwatch_testkit::is_inherited_override(&name) {
            cmd.env_remove(name);
        }
    }
    let fill = |text: &String| text.replace("{dir}", &dir.display().to_string());
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(case.env.iter().map(|(k, v)| (k, fill(v))));
    let out = cmd.output().expect("run flowwatch");
    let mut text = String::from_utf8_lossy(&out.stderr).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.code(), text)
}

#[test]
fn every_bad_input_is_refused_with_its_located_error_and_exit_code_2() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/cases.toml");
    let text = std::fs::read_to_string(&manifest).expect("corpus manifest");
    let corpus: Corpus = toml_edit::de::from_str(&text).expect("the corpus manifest parses");
    assert!(
        corpus.case.len() >= 40,
        "the corpus has {} cases",
        corpus.case.len()
    );
    let mut failures = Vec::new();
    for case in &corpus.case {
        let dir = tempfile::tempdir().expect("tempdir");
        lay_out(case, dir.path());
        for command in [&["check-config"][..], &["run"][..]] {
            let (code, output) = flowwatch(case, dir.path(), command);
            let mut problems = Vec::new();
            if code != Some(2) {
                problems.push(format!("exit code {code:?}, not 2"));
            }
            if output.contains("panicked") {
                problems.push("it panicked".to_string());
            }
            for expected in &case.expect {
                let expected = expected.replace("{dir}", &dir.path().display().to_string());
                if !output.contains(&expected) {
                    problems.push(format!("missing {expected:?}"));
                }
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{} ({}): {}\n--- output:\n{output}",
                    case.name,
                    command[0],
                    problems.join("; ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        corpus.case.len(),
        failures.join("\n\n")
    );
    println!(
        "{} bad-input cases refused correctly by check-config and run",
        corpus.case.len()
    );
}
