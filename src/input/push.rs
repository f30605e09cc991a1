//! `[push]`: the SQS queue an EventBridge rule fills with AWS Supply Chain's status-change
//! events, and how polling reconciles while it works. Checked here; read by the config.

use std::time::Duration;

use crate::input::aws::http_url_problem;

/// Push settings; present only when `push.queue_url` names a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct PushSettings {
    pub queue_url: String,
    /// An SQS endpoint override; else the SDK resolves it (so `AWS_ENDPOINT_URL_SQS` works).
    pub endpoint_url: Option<String>,
    /// The ReceiveMessage long poll, whole seconds from 1 to 20.
    pub wait_time: Duration,
    /// While receiving works, a running execution is polled this often, and no more.
    pub reconcile_interval: Duration,
    /// One GET on a pushed terminal change, for the fields the event lacks.
    pub fetch_details: bool,
}

impl PushSettings {
    pub const DEFAULT_WAIT_TIME: Duration = Duration::from_secs(20);
    pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(300);

    /// The region an AWS queue URL names (`https://sqs.{region}.amazonaws.com/…`, or the legacy
    /// `https://{region}.queue.amazonaws.com/…`): the queue is asked there, whatever region the
    /// Supply Chain client uses.
    pub fn queue_region(&self) -> Option<String> {
        let host = self.queue_url.split("://").nth(1)?.split('/').next()?;
        let host = host.split(':').next()?;
        let labels: Vec<&str> = host.split('.').collect();
        let region = match labels.as_slice() {
            ["sqs", region, "amazonaws", ..] => region,
            [region, "queue", "amazonaws", ..] => region,
            _ => return None,
        };
        let valid = !region.is_empty()
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        valid.then(|| (*region).to_string())
    }

    /// The account an AWS queue URL names (`https://sqs.{region}.amazonaws.com/{account}/{name}`).
    pub fn queue_account(&self) -> Option<String> {
        let path = self.queue_url.split("://").nth(1)?.split_once('/')?.1;
        let account = path.split('/').next()?;
        (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
            .then(|| account.to_string())
    }
}

/// Problems of `settings`, each with the key it is about.
pub fn check(settings: &PushSettings) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if let Some(problem) = http_url_problem(&settings.queue_url) {
        problems.push((
            "push.queue_url",
            format!(
                "push.queue_url must be the queue's http:// or https:// URL (as `aws sqs get-queue-url` prints it), not {:?}: it {problem}",
                crate::model::bounded(&settings.queue_url, 200)
            ),
        ));
    }
    if let Some(url) = &settings.endpoint_url
        && let Some(problem) = http_url_problem(url)
    {
        problems.push((
            "push.endpoint_url",
            format!(
                "push.endpoint_url must be an http:// or https:// URL, not {:?}: it {problem}",
                crate::model::bounded(url, 200)
            ),
        ));
    }
    let wait = settings.wait_time;
    if wait.subsec_nanos() != 0 || !(1..=20).contains(&wait.as_secs()) {
        problems.push((
            "push.wait_time",
            format!(
                "push.wait_time must be whole seconds from 1s to 20s (SQS's long poll), not {}",
                humantime::format_duration(wait)
            ),
        ));
    }
    let reconcile = settings.reconcile_interval;
    if !(Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&reconcile) {
        problems.push((
            "push.reconcile_interval",
            format!(
                "push.reconcile_interval must be between 10s and 24h, not {}",
                humantime::format_duration(reconcile)
            ),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(queue_url: &str) -> PushSettings {
        PushSettings {
            queue_url: queue_url.to_string(),
            endpoint_url: None,
            wait_time: PushSettings::DEFAULT_WAIT_TIME,
            reconcile_interval: PushSettings::DEFAULT_RECONCILE_INTERVAL,
            fetch_details: true,
        }
    }

    #[test]
    fn the_queue_region_comes_from_an_aws_queue_url() {
        let region = |url| settings(url).queue_region();
        assert_eq!(
            region("https://sqs.eu-west-1.amazonaws.com/123456789012/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region("https://us-east-2.queue.amazonaws.com/123456789012/q").as_deref(),
            Some("us-east-2")
        );
        assert_eq!(
            region("https://sqs.cn-north-1.amazonaws.com.cn/1/q").as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(region("http://127.0.0.1:4566/000000000000/q"), None);
        assert_eq!(
            region("https://vpce-1.sqs.us-east-1.vpce.amazonaws.com/1/q"),
            None
        );
    }

    #[test]
    fn the_queue_account_is_the_url_s_twelve_digit_path_segment() {
        let account = |url| settings(url).queue_account();
        assert_eq!(
            account("https://sqs.eu-west-1.amazonaws.com/123456789012/q").as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            account("http://127.0.0.1:4566/000000000000/q").as_deref(),
            Some("000000000000")
        );
        assert_eq!(account("https://sqs.eu-west-1.amazonaws.com/1/q"), None);
        assert_eq!(account("https://sqs.eu-west-1.amazonaws.com"), None);
    }

    #[test]
    fn every_bad_value_is_named_with_its_key() {
        let mut bad = settings("sqs.us-east-1.amazonaws.com/1/q");
        bad.endpoint_url = Some("localhost:4566".into());
        bad.wait_time = Duration::from_millis(1500);
        bad.reconcile_interval = Duration::from_secs(1);
        let keys: Vec<&str> = check(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "push.queue_url",
                "push.endpoint_url",
                "push.wait_time",
                "push.reconcile_interval"
            ]
        );
        assert!(check(&settings("https://sqs.us-east-1.amazonaws.com/1/q")).is_empty());
        let mut long = settings("https://sqs.us-east-1.amazonaws.com/1/q");
        long.wait_time = Duration::from_secs(21);
        assert_eq!(check(&long).len(), 1);
    }
}
