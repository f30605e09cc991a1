//! The status page at `GET /`: the engine's [`Overview`] rendered through one template
//! (`status.html`), which escapes every string it is given. The page loads nothing: its style is
//! inline and allowed by its hash in a `Content-Security-Policy` that forbids everything else,
//! scripts included; it refreshes itself with a `<meta>` tag, so it works with JavaScript off.

use std::sync::LazyLock;

use askama::Template;
use sha2::{Digest, Sha256};

use crate::engine::{FINISHED_SHOWN, FLOWS_PER_PAGE, Overview, RUNNING_SHOWN};
use crate::model::{Status, rfc3339_from_secs};

/// How often the page reloads itself.
const REFRESH_SECONDS: u32 = 30;

/// The page's style sheet, inline so the page needs no other request.
const STYLE: &str = "
:root{color-scheme:light dark;--bad:#c0262d;--ok:#1f7a3a;--warn:#a86400;--muted:#6b7280;--line:#d1d5db}
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;padding:1rem;max-width:72rem}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.15rem;margin:0 0 .4rem;overflow-wrap:anywhere}
h2 small,h3 small,dd small{color:var(--muted);font-weight:normal}h3{font-size:1rem;margin:.8rem 0 .3rem}
.summary span{display:inline-block;margin:0 .6rem .3rem 0}.note,.quiet,.empty{color:var(--muted)}
.bad{color:var(--bad);font-weight:600}.status.succeeded{color:var(--ok)}.status.failed,.status.not-found{color:var(--bad)}
.flow{border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;margin:1rem 0}
.flow.has-overdue,.flow.stale{border-color:var(--bad)}
.facts{display:flex;flex-wrap:wrap;gap:.3rem 1.5rem;margin:0}.facts dt{color:var(--muted);font-size:.85rem}.facts dd{margin:0}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
td code{font-size:.8rem;overflow-wrap:anywhere}.message{max-width:28rem;overflow-wrap:anywhere;white-space:pre-wrap}
tr.overdue{background:color-mix(in srgb,var(--bad) 12%,transparent)}
.badge{border-radius:4px;padding:0 .35rem;font-size:.8rem;color:#fff;background:var(--bad);white-space:nowrap}
.label{display:inline-block;font-size:.75rem;color:var(--muted);margin-left:.4rem}
meter{width:8rem;vertical-align:middle}.pages{margin:1rem 0}
@media (max-width:40rem){body{padding:.5rem}th,td{padding:.25rem}meter{width:5rem}.flow{padding:.6rem}}
";

/// The `Content-Security-Policy` of the page: nothing but its own inline style.
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let hash = aws_smithy_types::base64::encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage<'a> {
    o: &'a Overview,
    style: &'static str,
    refresh_seconds: u32,
    overdue_min: Option<f64>,
    now: Option<f64>,
    running_shown: usize,
    finished_shown: usize,
    flows_per_page: usize,
}

/// The page's HTML.
pub fn render(overview: &Overview) -> Result<String, askama::Error> {
    StatusPage {
        o: overview,
        style: STYLE,
        refresh_seconds: REFRESH_SECONDS,
        overdue_min: Some(overview.overdue_min.as_secs_f64()),
        now: Some(overview.now),
        running_shown: RUNNING_SHOWN,
        finished_shown: FINISHED_SHOWN,
        flows_per_page: FLOWS_PER_PAGE,
    }
    .render()
}

impl StatusPage<'_> {
    fn time(&self, t: &Option<f64>) -> String {
        t.map_or_else(
            || "—".to_string(),
            |t| rfc3339_from_secs(t).replace('T', " "),
        )
    }

    /// A time, and how long ago it was.
    fn ago(&self, t: &Option<f64>) -> String {
        match *t {
            Some(t) if t <= self.o.now => {
                format!("{} ago", self.duration(&Some(self.o.now - t)))
            }
            Some(t) => format!("in {}", self.duration(&Some(t - self.o.now))),
            None => "—".to_string(),
        }
    }

    fn span(&self, start: &Option<f64>, end: &Option<f64>) -> String {
        self.duration(&start.zip(*end).map(|(start, end)| end - start))
    }

    fn duration_of(&self, d: &std::time::Duration) -> String {
        self.duration(&Some(d.as_secs_f64()))
    }

    /// A duration in at most two units: `1h 5m`, `42s`.
    fn duration(&self, seconds: &Option<f64>) -> String {
        let Some(seconds) = seconds.filter(|s| s.is_finite() && *s >= 0.0) else {
            return "—".to_string();
        };
        let total = seconds.round() as u64;
        let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
        let parts: Vec<String> = units
            .iter()
            .scan(total, |rest, (size, name)| {
                let n = *rest / size;
                *rest %= size;
                Some((n, name))
            })
            .skip_while(|(n, _)| *n == 0)
            .take(2)
            .filter(|(n, _)| *n > 0)
            .map(|(n, name)| format!("{n}{name}"))
            .collect();
        if parts.is_empty() {
            "0s".to_string()
        } else {
            parts.join(" ")
        }
    }

    /// Elapsed time against the expected duration (1.0 at the expected end).
    fn progress(&self, start: &f64, expected_end: &f64) -> String {
        format!("{:.3}", self.ratio(start, expected_end))
    }

    fn ratio(&self, start: &f64, expected_end: &f64) -> f64 {
        let expected = expected_end - start;
        if expected > 0.0 {
            ((self.o.now - start) / expected).max(0.0)
        } else {
            0.0
        }
    }

    fn percent(&self, start: &f64, expected_end: &f64) -> String {
        format!(
            "{:.0}% of the median",
            self.ratio(start, expected_end) * 100.0
        )
    }

    /// The meter's end: past the overdue factor, so the overdue region shows.
    fn meter_max(&self, start: &f64, expected_end: &f64) -> String {
        let max = (self.o.overdue_factor * 1.25).max(self.ratio(start, expected_end));
        format!("{max:.3}")
    }

    fn previous_offset(&self) -> usize {
        self.o.offset.saturating_sub(FLOWS_PER_PAGE)
    }

    fn status_class(&self, status: &Status) -> &'static str {
        match status {
            Status::Unknown => "unknown",
            Status::InProgress => "in-progress",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::NotFound => "not-found",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::engine::{Finished, FlowOverview, Running};
    use crate::model::FlowKey;

    const HOSTILE: &str =
        "<img src=x onerror=\"document.title='pwned'\"> & </td><script>x</script>";

    fn overview() -> Overview {
        let labels = BTreeMap::from([("team".to_string(), "<b>ops</b>".to_string())]);
        Overview {
            now: 10_000.0,
            watched: 2,
            by_status: vec![(Status::InProgress, 1), (Status::Failed, 1)],
            overdue: 1,
            without_recent_success: 0,
            flows_total: 1,
            offset: 0,
            flows: vec![FlowOverview {
                key: FlowKey {
                    instance_id: "i-1".into(),
                    flow_name: "nightly".into(),
                },
                discovered: true,
                median: Some(600.0),
                samples: 5,
                last_success: Some(9_000.0),
                last_failure: Some(9_500.0),
                expect_success_within: Some(Duration::from_secs(93_600)),
                without_recent_success: false,
                running: vec![Running {
                    execution_id: "late".into(),
                    status: Status::InProgress,
                    start: Some(8_000.0),
                    expected_end: Some(8_600.0),
                    overdue: true,
                    labels: labels.clone(),
                }],
                running_total: 1,
                overdue: 1,
                finished: vec![Finished {
                    execution_id: "broken".into(),
                    status: Status::Failed,
                    start: Some(9_000.0),
                    end: Some(9_500.0),
                    message: Some(HOSTILE.into()),
                    source: Some("s3://bucket/<key>".into()),
                    diagnostics: None,
                    labels,
                }],
                finished_total: 1,
            }],
            overdue_factor: 2.0,
            overdue_min: Duration::from_secs(600),
            min_history: 3,
        }
    }

    #[test]
    fn strings_from_the_api_and_the_watchlist_are_escaped() {
        let html = render(&overview()).expect("render");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>ops"), "{html}");
        assert!(
            html.contains("&#60;img src=x onerror=&#34;document.title=&#39;pwned&#39;&#34;&#62;"),
            "{html}"
        );
        assert!(html.contains("s3://bucket/&#60;key&#62;"), "{html}");
    }

    #[test]
    fn the_overdue_run_is_marked_with_its_progress_against_the_median() {
        let html = render(&overview()).expect("render");
        assert!(
            html.contains(r#"<tr class="execution running overdue" data-execution-id="late">"#),
            "{html}"
        );
        assert!(html.contains("333% of the median"), "{html}");
        assert!(html.contains(r#"id="overdue-count">1 overdue"#), "{html}");
        assert!(html.contains("10m"), "median shown: {html}");
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style() {
        let html = render(&overview()).expect("render");
        let style = html
            .split("<style>")
            .nth(1)
            .and_then(|rest| rest.split("</style>").next())
            .expect("inline style");
        let hash = aws_smithy_types::base64::encode(Sha256::digest(style.as_bytes()));
        assert!(CONTENT_SECURITY_POLICY.contains(&format!("style-src 'sha256-{hash}'")));
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none';"));
        assert!(!html.contains("<script"), "no script at all");
    }
}
