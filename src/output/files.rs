//! The files flowwatch keeps, checked the same way by `run` and `check-config` before anything is
//! opened, and the lock that lets one daemon at a time use a state directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::model::io_error_text;
use crate::output::store::DB_FILE;

/// The lock file inside `state.path`; it holds the pid of the daemon that has the directory.
pub const LOCK_FILE: &str = "flowwatch.lock";

/// Problems with `state.path` or its database that `run` would refuse, found without changing
/// anything: the path is not a directory; the database is a dangling symlink, a directory, or
/// empty (a database flowwatch creates is never empty once opened, so an empty one was
/// truncated).
pub fn check_state_dir(dir: &Path) -> Result<(), (PathBuf, String)> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err((
                dir.to_path_buf(),
                "state.path is not a directory".to_string(),
            ));
        }
        // Created at start-up.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        // A symlink loop, a component that is a file, no permission to look.
        Err(e) => {
            let problem = format!("state.path cannot be used: {}", io_error_text(&e));
            return Err((dir.to_path_buf(), problem));
        }
        Ok(_) => {}
    }
    let db = dir.join(DB_FILE);
    let Ok(link) = db.symlink_metadata() else {
        return Ok(());
    };
    let problem = match db.metadata() {
        Err(_) if link.file_type().is_symlink() => {
            "the database is a symlink to a file that does not exist".to_string()
        }
        Err(e) => io_error_text(&e),
        Ok(m) if !m.is_file() => "the database path is not a file".to_string(),
        Ok(m) if m.len() == 0 => "the database is empty (0 bytes): it was truncated, and would \
            start afresh and announce every transition again; move it aside to start afresh on \
            purpose"
            .to_string(),
        Ok(_) => return Ok(()),
    };
    Err((db, problem))
}

/// Problems with `events.file` that `run` would refuse: it is a directory, or another thing
/// than a regular file (opening a FIFO would wait for a reader, with the daemon stuck).
pub fn check_events_file(file: &Path) -> Result<(), String> {
    match std::fs::metadata(file) {
        Ok(m) if m.is_dir() => Err("events.file is a directory, not a file".to_string()),
        Ok(m) if !m.is_file() => Err(format!(
            "events.file is {}, not a regular file",
            crate::model::file_kind(&m)
        )),
        _ => Ok(()),
    }
}

/// Whether starting would forget what was announced: no database (or an empty one) beside an
/// event file that already has events.
pub fn state_missing_beside_events(dir: &Path, events: Option<&Path>) -> bool {
    let db_empty = std::fs::metadata(dir.join(DB_FILE)).map_or(true, |m| m.len() == 0);
    let events_written = events
        .and_then(|e| std::fs::metadata(e).ok())
        .is_some_and(|m| m.len() > 0);
    db_empty && events_written
}

/// Why the state directory's lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another daemon holds it; in words, with its pid when known.
    Held(String),
    /// The lock file cannot be created or locked (a read-only or missing directory...).
    Io(std::io::Error),
}

/// An exclusive lock on `state.path`, held until dropped (the process exiting, even by
/// SIGKILL, drops it): two daemons on one state directory would announce every event twice.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock, or says which daemon has it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        std::fs::create_dir_all(dir).map_err(LockError::Io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(LockError::Io)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(LockError::Io)?;
                writeln!(file, "{}", std::process::id()).map_err(LockError::Io)?;
                Ok(Self { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "another flowwatch".to_string(),
                    pid => format!("another flowwatch (pid {pid})"),
                };
                Err(LockError::Held(format!(
                    "{holder} is using the state directory {}: two daemons on one state.path would \
                     write every event twice; stop it, or give this one its own state.path",
                    dir.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(LockError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = StateLock::acquire(dir.path()).expect("first");
        let Err(LockError::Held(second)) = StateLock::acquire(dir.path()) else {
            panic!("the second lock was taken");
        };
        assert!(
            second.contains(&format!("(pid {})", std::process::id())),
            "{second}"
        );
        drop(first);
        StateLock::acquire(dir.path()).expect("free again");
    }

    #[test]
    fn a_state_directory_run_would_refuse_is_found_without_opening_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            check_state_dir(dir.path()).is_ok(),
            "an empty directory is fine"
        );
        let db = dir.path().join(DB_FILE);
        std::fs::write(&db, "").expect("empty");
        assert!(
            check_state_dir(dir.path())
                .expect_err("empty")
                .1
                .contains("0 bytes")
        );
        std::fs::remove_file(&db).expect("rm");
        std::os::unix::fs::symlink(dir.path().join("gone"), &db).expect("symlink");
        assert!(
            check_state_dir(dir.path())
                .expect_err("dangling")
                .1
                .contains("symlink")
        );
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").expect("file");
        assert!(
            check_state_dir(&file)
                .expect_err("a file")
                .1
                .contains("not a directory")
        );
    }
}
