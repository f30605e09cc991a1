//! Many accounts and regions from one daemon: `[[aws.instance]]` tables give instances their
//! own region, role and external id. The flowwatch binary runs against the fake Supply Chain
//! API, which records who signed each call, and against moto's STS in its IAM-auth mode, where
//! flowwatch's IAM user may assume one role and is refused another, as its policy says.

use std::time::Duration;

use flowwatch_fake::{FakeServer, Signer, SignerLimit, Step};
use flowwatch_testkit::moto::Moto;
use flowwatch_testkit::*;
use serde_json::Value;

/// An instance reached through role `reader-a` with an external id, in eu-central-1.
const ROLE_A: &str = "8850c54e-e187-4fa7-89d4-6370f165174d";
/// An instance whose role flowwatch may not assume.
const REFUSED: &str = "9960d65f-f298-4fa7-89d4-6370f165174e";
/// An instance with no table: the base credentials, the base region.
const BASE: &str = "a1a1a1a1-b2b2-4c3c-8d4d-e5e5e5e5e5e5";
const MOTO_ACCOUNT: &str = "123456789012";

fn role(name: &str) -> String {
    format!("arn:aws:iam::{MOTO_ACCOUNT}:role/{name}")
}

/// In moto: user `flowwatch` with an access key, allowed to assume `reader-a` and nothing else,
/// and the roles `reader-a` and `reader-b`. Returns the user's key and secret. Five actions,
/// all before moto starts checking callers.
async fn iam_setup(moto: &Moto) -> (String, String) {
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"sts:AssumeRole","Resource":"{}"}}]}}"#,
        role("reader-a")
    );
    let user = moto.user("flowwatch", &policy).await;
    let trust = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{MOTO_ACCOUNT}:user/flowwatch"}},"Action":"sts:AssumeRole"}}]}}"#
    );
    for name in ["reader-a", "reader-b"] {
        moto.iam(&[
            ("Action", "CreateRole"),
            ("RoleName", name),
            ("AssumeRolePolicyDocument", &trust),
        ])
        .await;
    }
    user
}

/// A config against `endpoint` with `instances` (`[[aws.instance]]` tables) and JSON logs.
fn config_with(
    ws: &Workspace,
    endpoint: &str,
    polling: &str,
    instances: &str,
) -> std::path::PathBuf {
    ws.write(
        "flowwatch.toml",
        &format!(
            "watchlist = \"watchlist.toml\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n{polling}\n\
             [state]\npath = \"{dir}\"\n[events]\nstdout = false\nfile = \"{dir}/events.jsonl\"\n\
             [log]\nformat = \"json\"\n\n{instances}",
            dir = ws.dir.path().display(),
        ),
    )
}

fn write_watchlist(ws: &Workspace, runs: &[flowwatch_fake::ScriptedExecution]) {
    let mut watchlist = String::new();
    for run in runs {
        watchlist.push_str(&format!(
            "[[execution]]\ninstance_id = \"{}\"\nflow_name = \"{}\"\nexecution_id = \"{}\"\n\n",
            run.instance_id, run.flow_name, run.execution_id
        ));
    }
    ws.write("watchlist.toml", &watchlist);
}

/// One running execution of `flow` in `instance`, ending SUCCEEDED at 2 s.
fn run_of(instance: &str, flow: &str, n: usize) -> flowwatch_fake::ScriptedExecution {
    let mut run = scripted(flow, n, &[(0, "IN_PROGRESS"), (2, "SUCCEEDED")]);
    run.instance_id = instance.to_string();
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_is_signed_by_its_own_role_for_its_own_region_and_a_refused_role_stops_only_its_own()
 {
    let ws = Workspace::new();
    let moto = Moto::start_with_iam(ws.dir.path(), 5).await;
    let (key, secret) = iam_setup(&moto).await;
    let runs = vec![
        run_of(ROLE_A, "orders", 1),
        run_of(REFUSED, "orders", 2),
        run_of(BASE, "orders", 3),
    ];
    let fake = FakeServer::start(scenario(runs.clone()))
        .await
        .expect("fake");
    write_watchlist(&ws, &runs);
    let config = config_with(
        &ws,
        &fake.endpoint_url(),
        POLLING,
        &format!(
            "[[aws.instance]]\nid = \"{ROLE_A}\"\nregion = \"eu-central-1\"\nrole_arn = \"{a}\"\nexternal_id = \"flowwatch-ext-a\"\n\n\
             [[aws.instance]]\nid = \"{REFUSED}\"\nrole_arn = \"{b}\"\n",
            a = role("reader-a"),
            b = role("reader-b"),
        ),
    );

    let (mut child, addr, log) = spawn_daemon(
        env!("CARGO_BIN_EXE_flowwatch"),
        &config,
        &[
            ("AWS_ACCESS_KEY_ID", key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
            ("AWS_ENDPOINT_URL_STS", moto.endpoint.as_str()),
        ],
    )
    .await;

    let status_of = |status: &Value, instance: &str| -> Value {
        status["executions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["instance_id"] == instance)
            .cloned()
            .unwrap_or_default()
    };
    eventually(
        Duration::from_secs(30),
        "the two reachable runs end",
        || async {
            let status: Value =
                serde_json::from_str(&http(addr, "GET", "/status").await.1).unwrap_or_default();
            [ROLE_A, BASE]
                .iter()
                .all(|i| status_of(&status, i)["status"] == "SUCCEEDED")
        },
    )
    .await;

    // Signers: reader-a's assumed keys in eu-central-1 for its instance, the user's own key in
    // the base region for the other, and no call at all for the refused one.
    let stats = fake.stats();
    let signers = |instance: &str| -> Vec<Signer> {
        stats
            .signers_of_instance
            .get(instance)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        signers(BASE),
        [Signer {
            access_key: key.clone(),
            region: "us-east-1".into()
        }]
    );
    let role_a = signers(ROLE_A);
    assert_eq!(role_a.len(), 1, "{role_a:?}");
    assert_eq!(role_a[0].region, "eu-central-1");
    assert_ne!(role_a[0].access_key, key, "signed with the role's keys");
    assert!(
        signers(REFUSED).is_empty(),
        "no Supply Chain call without credentials"
    );

    // moto's STS granted reader-a with the external id, in session "flowwatch", and those are
    // the keys that signed: the external id reached STS.
    let granted = moto.assumed_roles().await;
    let reader_a: Vec<&Value> = granted
        .iter()
        .filter(|r| r["role_arn"] == role("reader-a"))
        .collect();
    assert!(!reader_a.is_empty(), "{granted:?}");
    for grant in &reader_a {
        assert_eq!(grant["external_id"], "flowwatch-ext-a");
        assert_eq!(grant["session_name"], "flowwatch");
    }
    assert!(
        reader_a
            .iter()
            .any(|g| g["access_key_id"] == role_a[0].access_key.as_str())
    );
    assert!(granted.iter().all(|r| r["role_arn"] != role("reader-b")));

    // The refused one: credentials_error, STS's words in /status, its execution untouched.
    let metrics = http(addr, "GET", "/metrics").await.1;
    let credentials_errors = sample(
        &metrics,
        "flowwatch_api_requests_total",
        &[
            ("account_id", MOTO_ACCOUNT),
            ("operation", "GetDataIntegrationFlowExecution"),
            ("outcome", "credentials_error"),
            ("region", "us-east-1"),
        ],
    )
    .unwrap_or_default();
    assert!(
        credentials_errors >= 1.0,
        "counted for the refused role's account and region: {metrics}"
    );
    // The outcome counts of every budget, for the record.
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("flowwatch_api_requests_total{") && !l.ends_with(" 0"))
    {
        println!("{line}");
    }
    let status: Value =
        serde_json::from_str(&http(addr, "GET", "/status").await.1).expect("status");
    let refused = status_of(&status, REFUSED);
    assert_eq!(refused["status"], "UNKNOWN", "{refused}");
    let reason = refused["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not authorized to perform: sts:AssumeRole"),
        "STS's words: {refused}"
    );

    // Each instance's region, account and health, in the metrics and /status; one instance
    // down leaves the service ready.
    let metrics = http(addr, "GET", "/metrics").await.1;
    let up = |instance: &str| {
        sample(
            &metrics,
            "flowwatch_instance_up",
            &[("instance_id", instance)],
        )
    };
    assert_eq!(
        (up(ROLE_A), up(BASE), up(REFUSED)),
        (Some(1.0), Some(1.0), Some(0.0))
    );
    let info = |instance: &str, region: &str, account: &str| {
        sample(
            &metrics,
            "flowwatch_instance_info",
            &[
                ("instance_id", instance),
                ("region", region),
                ("account_id", account),
            ],
        )
    };
    assert_eq!(
        info(ROLE_A, "eu-central-1", MOTO_ACCOUNT),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(info(REFUSED, "us-east-1", MOTO_ACCOUNT), Some(1.0));
    assert_eq!(info(BASE, "us-east-1", ""), Some(1.0));
    let instances = status["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(instances.len(), 3, "{status}");
    let refused = instances
        .iter()
        .find(|i| i["instance_id"] == REFUSED)
        .expect("the refused instance");
    assert_eq!(refused["up"], false);
    assert_eq!(refused["region"], "us-east-1");
    assert_eq!(refused["account_id"], MOTO_ACCOUNT);
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not authorized to perform: sts:AssumeRole")),
        "{refused}"
    );
    assert_eq!(
        http(addr, "GET", "/readyz").await.0,
        200,
        "other instances are up"
    );
    let role_a_run = status_of(&status, ROLE_A);
    assert_eq!(
        (&role_a_run["region"], &role_a_run["account_id"]),
        (&Value::from("eu-central-1"), &Value::from(MOTO_ACCOUNT)),
        "{role_a_run}"
    );

    // Events say where each execution's instance is.
    let ended = ws
        .events()
        .into_iter()
        .find(|e| e["data"]["instance_id"] == ROLE_A && e["data"]["to_status"] == "SUCCEEDED")
        .expect("the role's run ended");
    assert_eq!(
        (&ended["data"]["region"], &ended["data"]["account_id"]),
        (&Value::from("eu-central-1"), &Value::from(MOTO_ACCOUNT))
    );

    // No secret in the log: not the user's, not the role's.
    let log = log.lock().expect("log").join("\n");
    assert!(!log.contains(&secret), "the user's secret is logged");
    for grant in &granted {
        let role_secret = grant["secret_access_key"].as_str().unwrap_or("-");
        assert!(!log.contains(role_secret), "an assumed secret is logged");
    }
    let _ = child.start_kill();
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_one_region_leaves_the_other_s_rate_and_calls_alone() {
    let ws = Workspace::new();
    let runs = vec![
        run_of(ROLE_A, "orders", 1),
        run_of(ROLE_A, "orders", 2),
        run_of(BASE, "orders", 3),
        run_of(BASE, "orders", 4),
    ];
    let mut script = scenario(
        runs.iter()
            .map(|r| {
                let mut r = r.clone();
                r.timeline = vec![Step {
                    at: Duration::ZERO,
                    status: "IN_PROGRESS".into(),
                    message: None,
                }];
                r
            })
            .collect(),
    );
    // The base key is throttled hard in eu-central-1, and not at all in us-east-1.
    script.signer_limits.push(SignerLimit {
        access_key: "AKIDBUDGETS".into(),
        region: "eu-central-1".into(),
        requests_per_second: 0.2,
        burst: 1.0,
    });
    let fake = FakeServer::start(script).await.expect("fake");
    write_watchlist(&ws, &runs);
    let polling = "[polling]\ninitial_interval = \"200ms\"\nmax_interval = \"400ms\"\nmax_requests_per_second = 20.0\nrequest_timeout = \"2s\"\n";
    let config = config_with(
        &ws,
        &fake.endpoint_url(),
        polling,
        &format!("[[aws.instance]]\nid = \"{ROLE_A}\"\nregion = \"eu-central-1\"\n"),
    );
    let (mut child, addr, _log) = spawn_daemon(
        env!("CARGO_BIN_EXE_flowwatch"),
        &config,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDBUDGETS"),
            ("AWS_SECRET_ACCESS_KEY", "budgets-test-secret"),
        ],
    )
    .await;
    let rate = |metrics: &str, region: &str| {
        sample(
            metrics,
            "flowwatch_rate_limit_requests_per_second",
            &[("account_id", ""), ("region", region)],
        )
    };
    eventually(
        Duration::from_secs(20),
        "the throttled region's rate cut",
        || async {
            rate(&http(addr, "GET", "/metrics").await.1, "eu-central-1").is_some_and(|r| r < 20.0)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = http(addr, "GET", "/metrics").await.1;
    assert_eq!(rate(&metrics, "us-east-1"), Some(20.0), "{metrics}");
    let stats = fake.stats();
    let signer = |region: &str| Signer {
        access_key: "AKIDBUDGETS".into(),
        region: region.into(),
    };
    assert!(stats.throttled_by_signer[&signer("eu-central-1")] >= 1);
    assert_eq!(
        stats.throttled_by_signer.get(&signer("us-east-1")),
        None,
        "never throttled"
    );
    // The unthrottled region keeps its pace: about 2.5 polls a second per execution at a 400 ms
    // ceiling, for 3 s and more.
    assert!(
        stats.by_signer[&signer("us-east-1")] >= 10,
        "{:?}",
        stats.by_signer
    );
    let _ = child.start_kill();
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_the_config_file_adds_and_removes_an_instance_without_a_restart() {
    let ws = Workspace::new();
    let running = |instance: &str, n: usize| {
        let mut run = scripted("orders", n, &[(0, "IN_PROGRESS")]);
        run.instance_id = instance.to_string();
        run
    };
    let runs = vec![running(ROLE_A, 1), running(BASE, 2)];
    let fake = FakeServer::start(scenario(runs.clone()))
        .await
        .expect("fake");
    write_watchlist(&ws, &runs);
    let polling = "[polling]\ninitial_interval = \"200ms\"\nmax_interval = \"400ms\"\nrequest_timeout = \"2s\"\n";
    let endpoint = fake.endpoint_url();
    let config = config_with(&ws, &endpoint, polling, "");
    let (mut child, addr, log) = spawn_daemon(
        env!("CARGO_BIN_EXE_flowwatch"),
        &config,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDRELOAD"),
            ("AWS_SECRET_ACCESS_KEY", "reload-test-secret"),
        ],
    )
    .await;
    let calls_in = |region: &str| {
        let signer = Signer {
            access_key: "AKIDRELOAD".into(),
            region: region.into(),
        };
        fake.stats().by_signer.get(&signer).copied().unwrap_or(0)
    };
    let metric = |name: &'static str, labels: Vec<(&'static str, &'static str)>| async move {
        sample(&http(addr, "GET", "/metrics").await.1, name, &labels)
    };
    let info_in = |region: &'static str| {
        metric(
            "flowwatch_instance_info",
            vec![
                ("instance_id", ROLE_A),
                ("region", region),
                ("account_id", ""),
            ],
        )
    };
    eventually(Duration::from_secs(10), "both polled", || async {
        calls_in("us-east-1") >= 4
    })
    .await;
    assert_eq!(calls_in("eu-central-1"), 0);

    // Added: its calls go to its own region, at its own cap, from the same process.
    let table = |region: &str| {
        format!(
            "[[aws.instance]]\nid = \"{ROLE_A}\"\nregion = \"{region}\"\nmax_requests_per_second = 3.0\n"
        )
    };
    config_with(&ws, &endpoint, polling, &table("eu-central-1"));
    signal(&child, "HUP");
    eventually(
        Duration::from_secs(10),
        "the instance's calls in its region",
        || async { calls_in("eu-central-1") >= 3 },
    )
    .await;
    assert_eq!(info_in("eu-central-1").await, Some(1.0));
    assert_eq!(info_in("us-east-1").await, None);
    let rate = |region: &'static str| {
        metric(
            "flowwatch_rate_limit_requests_per_second",
            vec![("account_id", ""), ("region", region)],
        )
    };
    assert_eq!(rate("eu-central-1").await, Some(3.0));
    assert_eq!(rate("us-east-1").await, Some(5.0));

    // A config with a problem is refused whole: the instance stays as it was.
    config_with(&ws, &endpoint, polling, &table("Nowhere_1"));
    signal(&child, "HUP");
    eventually(Duration::from_secs(10), "the reload refused", || async {
        metric("flowwatch_config_last_reload_successful", vec![]).await == Some(0.0)
    })
    .await;
    assert_eq!(info_in("eu-central-1").await, Some(1.0));
    let before = calls_in("eu-central-1");
    eventually(Duration::from_secs(10), "its calls go on", || async {
        calls_in("eu-central-1") > before
    })
    .await;

    // Removed, by saving the file alone (the file watch): back to the base region and budget.
    config_with(&ws, &endpoint, polling, "");
    eventually(
        Duration::from_secs(10),
        "the instance back on the base",
        || async { info_in("us-east-1").await == Some(1.0) },
    )
    .await;
    assert_eq!(info_in("eu-central-1").await, None);
    assert_eq!(rate("eu-central-1").await, None, "no budget there any more");
    let (left_at, base_before) = (calls_in("eu-central-1"), calls_in("us-east-1"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        calls_in("eu-central-1") <= left_at + 1,
        "at most a call in flight when it left"
    );
    assert!(calls_in("us-east-1") > base_before);
    assert!(
        child.try_wait().expect("state").is_none(),
        "never restarted"
    );
    let status: Value =
        serde_json::from_str(&http(addr, "GET", "/status").await.1).expect("status");
    assert_eq!(status["executions_total"], 2, "{status}");

    let log = log.lock().expect("log").join("\n");
    assert!(log.contains("instances_added"), "{log}");
    assert!(
        log.contains("Nowhere_1"),
        "the refusal names the bad region: {log}"
    );
    let _ = child.start_kill();
    fake.stop().await;
}
