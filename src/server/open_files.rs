//! The process's open-file limit. Every HTTP connection, API connection, the state database and
//! the event file hold a descriptor each, and a soft limit of 1,024 (systemd's default) would
//! undercut `server.max_connections` (1,024 by default too). At start-up the soft limit is raised
//! to the hard one; a hard limit still below what flowwatch may hold is logged with both figures.

/// Descriptors flowwatch needs beside its HTTP and API connections: the state database with its
/// WAL and shared memory, the lock, the event file and the sinks' place files, stdio, the
/// runtime's epoll and wakers, a reload's read, the TLS files, DNS. 64 leaves room.
pub const OWN_DESCRIPTORS: u64 = 64;

/// The open-file limit before and after start-up, and what flowwatch may need at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub limit: u64,
    pub needed: u64,
}

impl OpenFiles {
    /// What flowwatch may hold: `max_connections` HTTP connections, `api_connections` to the
    /// APIs, and its own descriptors.
    pub fn needed(max_connections: usize, api_connections: usize) -> u64 {
        (max_connections + api_connections) as u64 + OWN_DESCRIPTORS
    }

    /// Why the limit undercuts what flowwatch may hold, if it does.
    pub fn shortfall(&self) -> Option<String> {
        (self.limit < self.needed).then(|| {
            format!(
                "the open-file limit is {} (the hard limit), below the {} descriptors \
                 server.max_connections, the API connections and flowwatch's own files may need: \
                 connections past it fail to be accepted; raise LimitNOFILE (systemd) or \
                 `ulimit -n`, or lower server.max_connections",
                self.limit, self.needed
            )
        })
    }
}

/// Raises the soft open-file limit to the hard one.
pub fn raise(needed: u64) -> std::io::Result<OpenFiles> {
    let (before, _hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(OpenFiles {
        before,
        limit,
        needed,
    })
}

/// Raises the limit and logs what became of it: at debug when it suffices, as a warning naming
/// both figures when it does not.
pub fn raise_and_report(needed: u64) {
    match raise(needed) {
        Ok(files) => match files.shortfall() {
            Some(problem) => tracing::warn!(limit = files.limit, needed, "{problem}"),
            None => tracing::debug!(
                before = files.before,
                limit = files.limit,
                needed,
                "open-file limit raised to the hard limit"
            ),
        },
        Err(e) => tracing::warn!(error = %e, needed, "cannot read or raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_below_the_connections_and_own_files_is_a_shortfall() {
        let needed = OpenFiles::needed(1024, 16);
        assert_eq!(needed, 1024 + 16 + OWN_DESCRIPTORS);
        let short = OpenFiles {
            before: 1024,
            limit: 1024,
            needed,
        };
        let problem = short.shortfall().expect("short");
        assert!(
            problem.contains("is 1024") && problem.contains("1104"),
            "{problem}"
        );
        let enough = OpenFiles {
            limit: 524_288,
            ..short
        };
        assert_eq!(enough.shortfall(), None);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let files = raise(100).expect("getrlimit works here");
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        assert_eq!(files.limit, soft);
        assert_eq!(soft, hard);
        assert!(files.before <= files.limit);
    }
}
