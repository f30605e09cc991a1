//! Transitions and their CloudEvents 1.0 JSON Lines encoding, and the sinks they are written to
//! (stdout and an append-only file).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::model::{ExecutionKey, Overdue, Status, Transition, rfc3339, rfc3339_from_secs};
use crate::output::metrics::Metrics;

/// The CloudEvents `type` of a status change.
pub const TRANSITION_TYPE: &str = "flowwatch.execution.transition";
/// The CloudEvents `type` sent when the API rejects an entry as invalid (ValidationException).
pub const REJECTED_TYPE: &str = "flowwatch.execution.rejected";
/// The CloudEvents `type` sent once when a running execution becomes overdue.
pub const OVERDUE_TYPE: &str = "flowwatch.execution.overdue";

/// The CloudEvents 1.0 envelope every flowwatch event shares. The id is deterministic
/// (`<key>/<what>`), so a consumer can deduplicate, also across restarts.
fn envelope(key: &ExecutionKey, what: &str, kind: &str, at: SystemTime, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{key}/{what}"),
        "source": "flowwatch",
        "type": kind,
        "time": rfc3339(at),
        "subject": key.to_string(),
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// The event of a status change: one id per execution and target status.
pub fn transition_event(t: &Transition) -> Value {
    let obs = t.observation.as_ref();
    let data = json!({
        "instance_id": t.key.instance_id,
        "flow_name": t.key.flow_name,
        "execution_id": t.key.execution_id,
        "from_status": t.from,
        "to_status": t.to,
        "observed_via": t.via,
        "message": obs.and_then(|o| o.message.clone()),
        "start_time": obs.and_then(|o| o.start_time).map(rfc3339_from_secs),
        "end_time": obs.and_then(|o| o.end_time).map(rfc3339_from_secs),
        "source_info": obs.and_then(|o| o.source_info.clone()),
        "diagnostic_reports_root_s3_uri": obs.and_then(|o| o.diagnostic_reports_root_s3_uri.clone()),
        "labels": t.labels,
    });
    envelope(&t.key, t.to.as_str(), TRANSITION_TYPE, t.at, data)
}

/// The event sent when the API answers ValidationException: the entry is invalid and polling it
/// stops.
pub fn rejected_event(
    key: &ExecutionKey,
    status: Status,
    message: &str,
    at: SystemTime,
    labels: &BTreeMap<String, String>,
) -> Value {
    let data = json!({
        "instance_id": key.instance_id,
        "flow_name": key.flow_name,
        "execution_id": key.execution_id,
        "status": status,
        "message": message,
        "labels": labels,
    });
    envelope(key, "REJECTED", REJECTED_TYPE, at, data)
}

/// The event sent once when a running execution becomes overdue.
pub fn overdue_event(o: &Overdue) -> Value {
    let e = &o.expectation;
    let data = json!({
        "instance_id": o.key.instance_id,
        "flow_name": o.key.flow_name,
        "execution_id": o.key.execution_id,
        "start_time": rfc3339_from_secs(o.start_time),
        "expected_end_time": rfc3339_from_secs(e.expected_end),
        "median_duration_seconds": e.median,
        "overdue_after_seconds": e.overdue_after,
        "running_seconds": o.running.round(),
        "labels": o.labels,
    });
    envelope(&o.key, "OVERDUE", OVERDUE_TYPE, o.at, data)
}

/// Where events go. Each sink is independent: one failing does not stop the other.
pub struct Sinks {
    stdout: bool,
    file: Option<FileSink>,
}

struct FileSink {
    path: PathBuf,
    file: Option<File>,
    failing: bool,
}

/// Which file an open handle or a path is: device and inode.
fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

impl Sinks {
    /// Opens the event file (creating its directory) so a bad path fails at start-up, not at the
    /// first transition.
    pub fn open(stdout: bool, file: Option<&Path>) -> io::Result<Self> {
        let file = match file {
            Some(path) => Some(FileSink {
                path: path.to_path_buf(),
                file: Some(open_append(path)?),
                failing: false,
            }),
            None => None,
        };
        Ok(Self { stdout, file })
    }

    /// Writes one event (a JSON line without its newline) to every sink and counts the result
    /// per sink; true when every sink took it.
    pub fn emit(&mut self, event: &str, metrics: &Metrics) -> bool {
        let mut line = String::with_capacity(event.len() + 1);
        line.push_str(event);
        line.push('\n');
        let mut all_ok = true;
        if self.stdout {
            let result = {
                let mut out = io::stdout().lock();
                out.write_all(line.as_bytes()).and_then(|()| out.flush())
            };
            metrics.event_written("stdout", result.is_ok());
            all_ok &= result.is_ok();
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot write event to stdout");
            }
        }
        if let Some(sink) = &mut self.file {
            let result = sink.write(line.as_bytes());
            metrics.event_written("file", result.is_ok());
            all_ok &= result.is_ok();
            match result {
                Ok(()) if sink.failing => {
                    sink.failing = false;
                    tracing::info!(path = %sink.path.display(), "event file is writable again");
                }
                Ok(()) => {}
                Err(e) if !sink.failing => {
                    sink.failing = true;
                    tracing::error!(path = %sink.path.display(), error = %e,
                        "cannot write event to file; counting failures until it recovers");
                }
                Err(_) => {}
            }
        }
        all_ok
    }

    /// Reopens the event file by its path, so events go to the file there now (SIGHUP after
    /// log rotation). A file that cannot be opened is opened again at the next event.
    pub fn reopen(&mut self) {
        if let Some(sink) = &mut self.file {
            sink.file = open_append(&sink.path)
                .inspect_err(|e| tracing::error!(path = %sink.path.display(), error = %e, "cannot reopen the event file"))
                .ok();
        }
    }

    /// Pushes events to disk before exit.
    pub fn flush(&mut self) {
        if let Some(FileSink {
            file: Some(f),
            path,
            ..
        }) = &mut self.file
            && let Err(e) = f.sync_data()
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot sync event file");
        }
        let _ = io::stdout().lock().flush();
    }
}

impl FileSink {
    /// Whether the file open is no longer the one at the path: renamed or deleted by log
    /// rotation. Writing on would put events where nobody reads them.
    fn rotated(&self) -> bool {
        let Some(open) = self.file.as_ref().and_then(|f| f.metadata().ok()) else {
            return false;
        };
        std::fs::metadata(&self.path).map_or(true, |at_path| identity(&at_path) != identity(&open))
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.rotated() {
            tracing::info!(path = %self.path.display(), "the event file was renamed or deleted: reopening it by its path");
            self.file = None;
        }
        if self.file.is_none() {
            self.file = Some(open_append(&self.path)?);
        }
        let result = match &mut self.file {
            Some(f) => f.write_all(line),
            None => Ok(()),
        };
        if result.is_err() {
            // Reopen next time: the file may have been rotated away or its disk replaced.
            self.file = None;
        }
        result
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    // A process killed in the middle of a line leaves it unterminated: end it, so the next event
    // starts on a line of its own and readers can skip the torn one.
    if ends_mid_line(&mut file)? {
        file.write_all(b"\n")?;
    }
    Ok(file)
}

fn ends_mid_line(file: &mut File) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    use crate::model::{ApiStatus, Observation, ObservedVia, S3Source, SourceInfo};

    #[test]
    fn absurd_api_times_are_written_as_the_epoch_not_a_panic() {
        for secs in [1e300, -5.0, f64::NAN, f64::INFINITY, 1e12] {
            assert_eq!(rfc3339_from_secs(secs), "1970-01-01T00:00:00Z", "{secs}");
        }
        assert_eq!(
            rfc3339_from_secs(1_764_061_200.5),
            "2025-11-25T09:00:00.500Z"
        );
    }

    #[test]
    fn a_transition_encodes_as_a_cloud_event_with_every_response_field() {
        let key = ExecutionKey::new(
            "8850c54e-e187-4fa7-89d4-6370f165174d",
            "daily-orders",
            "a1b2c3d4-0000-4000-8000-000000000001",
        )
        .expect("valid key");
        let t = Transition {
            key,
            from: Status::InProgress,
            to: Status::Failed,
            at: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            observation: Some(Observation {
                status: ApiStatus::Failed,
                source_info: Some(SourceInfo {
                    source_type: "S3".into(),
                    s3_source: Some(S3Source {
                        bucket_name: "bucket".into(),
                        key: "orders/day.csv".into(),
                    }),
                    dataset_source: None,
                }),
                message: Some("schema mismatch".into()),
                start_time: Some(1_794_999_000.0),
                end_time: Some(1_794_999_990.5),
                diagnostic_reports_root_s3_uri: Some("s3://bucket/diag/".into()),
            }),
            labels: BTreeMap::from([("team".to_string(), "planning".to_string())]),
            via: ObservedVia::Poll,
        };
        let e = transition_event(&t);
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(
            e["id"],
            "8850c54e-e187-4fa7-89d4-6370f165174d/daily-orders/a1b2c3d4-0000-4000-8000-000000000001/FAILED"
        );
        assert_eq!(e["type"], TRANSITION_TYPE);
        assert_eq!(e["time"], "2026-11-18T11:06:40Z");
        let d = &e["data"];
        assert_eq!(d["from_status"], "IN_PROGRESS");
        assert_eq!(d["to_status"], "FAILED");
        assert_eq!(d["message"], "schema mismatch");
        assert_eq!(d["start_time"], "2026-11-18T10:50:00Z");
        assert_eq!(d["end_time"], "2026-11-18T11:06:30.500Z");
        assert_eq!(d["source_info"]["s3_source"]["key"], "orders/day.csv");
        assert_eq!(d["diagnostic_reports_root_s3_uri"], "s3://bucket/diag/");
        assert_eq!(d["labels"]["team"], "planning");
        assert_eq!(d["observed_via"], "poll");
        assert!(!e.to_string().contains('\n'), "one event, one line");
    }
}
