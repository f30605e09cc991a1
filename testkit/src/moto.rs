//! moto's server mode as the independent EventBridge and SQS of the push tests: started on a
//! loopback port, with a queue (and its dead-letter queue) that an EventBridge rule on the
//! default bus fills with AWS Supply Chain's status-change events, as
//! `deploy/aws/flowwatch-events.yaml` sets it up on AWS. In its IAM-auth mode it is also the
//! independent IAM and STS of the tests of assumed roles.

use std::path::Path;
use std::time::Duration;

use flowwatch_fake::aws_json;
use serde_json::{Value, json};

use crate::{free_port, spawn_tool};

pub const REGION: &str = "us-east-1";

/// A running moto server; stopped when dropped.
pub struct Moto {
    pub endpoint: String,
    child: tokio::process::Child,
}

/// A queue of the push tests.
#[derive(Debug, Clone)]
pub struct PushQueues {
    pub url: String,
    pub dead_letter_url: String,
}

impl Moto {
    /// Starts `moto_server` (PyPI `moto[server]`, which `.ci/test` installs) on a free port.
    pub async fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port()).await
    }

    /// Starts it on `port`, and waits until it answers.
    pub async fn start_on(dir: &Path, port: u16) -> Self {
        let args = [
            "-H".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        let child = spawn_tool(
            &["moto_server"],
            &args,
            &dir.join(format!("moto-{port}.log")),
        );
        let moto = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        for _ in 0..300 {
            if moto
                .try_call("sqs", "AmazonSQS.ListQueues", json!({}))
                .await
                .is_ok()
            {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "moto_server did not answer on port {port} within 15 s (pip install 'moto[server]')"
        );
    }

    /// Starts `moto_server` in its IAM-auth mode: the first `open_actions` calls are served
    /// without checking who makes them (to set up users and roles), every later one is
    /// authenticated and allowed only as the caller's IAM policies say.
    pub async fn start_with_iam(dir: &Path, open_actions: u32) -> Self {
        let port = free_port();
        let log = std::fs::File::create(dir.join(format!("moto-{port}.log"))).expect("log");
        let child = tokio::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", open_actions.to_string())
            .stdout(std::process::Stdio::from(log.try_clone().expect("log")))
            .stderr(std::process::Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server is installed (pip install 'moto[server]'; bash .ci/test does it)");
        let moto = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        // Its own API answers without spending an action.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && crate::http(addr, "GET", "/moto-api/data.json").await.0 == 200
            {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not answer on port {port} within 15 s");
    }

    /// Freezes moto (SIGSTOP): every call to it hangs until [`Moto::resume`].
    pub fn pause(&self) {
        crate::signal(&self.child, "STOP");
    }

    pub fn resume(&self) {
        crate::signal(&self.child, "CONT");
    }

    /// A DynamoDB table, on demand, with `keys` (name, `HASH` or `RANGE`) of type string.
    pub async fn create_table(&self, name: &str, keys: &[(&str, &str)]) {
        let schema: Vec<Value> = keys
            .iter()
            .map(|(key, kind)| json!({ "AttributeName": key, "KeyType": kind }))
            .collect();
        let attributes: Vec<Value> = keys
            .iter()
            .map(|(key, _)| json!({ "AttributeName": key, "AttributeType": "S" }))
            .collect();
        self.call(
            "dynamodb",
            "DynamoDB_20120810.CreateTable",
            json!({
                "TableName": name,
                "KeySchema": schema,
                "AttributeDefinitions": attributes,
                "BillingMode": "PAY_PER_REQUEST",
            }),
        )
        .await;
    }

    /// One IAM call (query protocol) that must succeed; its XML answer.
    pub async fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut all = params.to_vec();
        all.push(("Version", "2010-05-08"));
        flowwatch_fake::aws_query(&self.endpoint, REGION, "iam", &all)
            .await
            .unwrap_or_else(|e| panic!("IAM {params:?}: {e}"))
    }

    /// IAM user `name` with an access key and the inline policy `policy` (a JSON document);
    /// returns the key and its secret. Three IAM actions.
    pub async fn user(&self, name: &str, policy: &str) -> (String, String) {
        self.iam(&[("Action", "CreateUser"), ("UserName", name)])
            .await;
        let key = self
            .iam(&[("Action", "CreateAccessKey"), ("UserName", name)])
            .await;
        let field = |tag: &str| {
            key.split(&format!("<{tag}>"))
                .nth(1)
                .and_then(|rest| rest.split(&format!("</{tag}>")).next())
                .unwrap_or_else(|| panic!("no {tag} in {key}"))
                .to_string()
        };
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "flowwatch"),
            ("PolicyDocument", policy),
        ])
        .await;
        (field("AccessKeyId"), field("SecretAccessKey"))
    }

    /// What moto's STS remembers of each AssumeRole it granted: `role_arn`, `external_id`,
    /// `session_name`, `access_key_id`.
    pub async fn assumed_roles(&self) -> Vec<Value> {
        let addr = self
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("moto's address");
        let (_, body) = crate::http(addr, "GET", "/moto-api/data.json").await;
        let data: Value = serde_json::from_str(&body).unwrap_or_default();
        data["sts"]["AssumedRole"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn try_call(&self, service: &str, target: &str, body: Value) -> Result<Value, String> {
        aws_json(&self.endpoint, REGION, service, target, &body).await
    }

    /// One call that must succeed.
    pub async fn call(&self, service: &str, target: &str, body: Value) -> Value {
        self.try_call(service, target, body)
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"))
    }

    /// A queue whose messages go to a dead-letter queue after `max_receives` receives, with a
    /// `visibility` timeout of whole seconds, fed by a rule matching AWS Supply Chain's
    /// status-change events.
    pub async fn push_queues(&self, name: &str, max_receives: u32, visibility: u32) -> PushQueues {
        let dead_letter_url = self.create_queue(&format!("{name}-dlq"), json!({})).await;
        let dead_letter_arn = self.queue_arn(&dead_letter_url).await;
        let redrive =
            json!({ "deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receives });
        let url = self
            .create_queue(
                name,
                json!({ "RedrivePolicy": redrive.to_string(), "VisibilityTimeout": visibility.to_string() }),
            )
            .await;
        let arn = self.queue_arn(&url).await;
        let pattern = json!({
            "source": ["aws.supplychain"],
            "detail-type": ["AWS Supply Chain Data Integration Status Change"],
        });
        let rule = format!("{name}-rule");
        self.call(
            "events",
            "AWSEvents.PutRule",
            json!({ "Name": rule, "EventPattern": pattern.to_string() }),
        )
        .await;
        self.call(
            "events",
            "AWSEvents.PutTargets",
            json!({ "Rule": rule, "Targets": [{ "Id": "queue", "Arn": arn }] }),
        )
        .await;
        PushQueues {
            url,
            dead_letter_url,
        }
    }

    async fn create_queue(&self, name: &str, attributes: Value) -> String {
        let answer = self
            .call(
                "sqs",
                "AmazonSQS.CreateQueue",
                json!({ "QueueName": name, "Attributes": attributes }),
            )
            .await;
        answer["QueueUrl"].as_str().expect("QueueUrl").to_string()
    }

    async fn queue_arn(&self, url: &str) -> String {
        self.attribute(url, "QueueArn").await
    }

    async fn attribute(&self, url: &str, name: &str) -> String {
        let answer = self
            .call(
                "sqs",
                "AmazonSQS.GetQueueAttributes",
                json!({ "QueueUrl": url, "AttributeNames": [name] }),
            )
            .await;
        answer["Attributes"][name]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Messages in the queue, visible or being processed.
    pub async fn messages_in(&self, url: &str) -> u64 {
        let mut total = 0;
        for name in [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
        ] {
            total += self.attribute(url, name).await.parse::<u64>().unwrap_or(0);
        }
        total
    }

    /// Sends `body` as a message, as an EventBridge rule would.
    pub async fn send(&self, url: &str, body: &str) {
        self.call(
            "sqs",
            "AmazonSQS.SendMessage",
            json!({ "QueueUrl": url, "MessageBody": body }),
        )
        .await;
    }

    /// Takes the bodies of up to ten messages off `url` (deleting them), waiting up to `wait`.
    pub async fn take(&self, url: &str, wait: u32) -> Vec<String> {
        let answer = self
            .call(
                "sqs",
                "AmazonSQS.ReceiveMessage",
                json!({ "QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": wait }),
            )
            .await;
        let messages = answer["Messages"].as_array().cloned().unwrap_or_default();
        for m in &messages {
            self.call(
                "sqs",
                "AmazonSQS.DeleteMessage",
                json!({ "QueueUrl": url, "ReceiptHandle": m["ReceiptHandle"] }),
            )
            .await;
        }
        messages
            .iter()
            .map(|m| m["Body"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// A status-change event of execution `execution_id` of `flow`, as EventBridge delivers it.
pub fn status_event(flow: &str, execution_id: &str, status: &str, end_time: &str) -> String {
    json!({
        "version": "0",
        "id": format!("{execution_id}-{status}"),
        "detail-type": "AWS Supply Chain Data Integration Status Change",
        "source": "aws.supplychain",
        "account": "123456789012",
        "time": "2026-01-01T00:00:00Z",
        "region": REGION,
        "resources": [],
        "detail": {
            "version": "1.0",
            "instanceId": crate::INSTANCE,
            "flowArn": format!("arn:aws:scn:{REGION}:123456789012:instance/{}/data-integration-flows/{flow}", crate::INSTANCE),
            "flowExecutionId": execution_id,
            "status": status,
            "startTime": "2026-01-01T00:00:00Z",
            "endTime": end_time,
            "message": "",
            "sourceType": "S3",
            "sourceInfo": { "s3Source": { "bucketName": "b", "key": "k" } }
        }
    })
    .to_string()
}
