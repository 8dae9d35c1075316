//! A message answered with 200 survives `kill -9` of the node.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

async fn spawn(dir: &std::path::Path, http: u16, db: &Option<String>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lodge"));
    cmd.args(["serve", "--data-dir"]).arg(dir);
    if let Some(url) = db {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd
        .args([
            "--http-listen",
            &format!("127.0.0.1:{http}"),
            // Port 0: each media worker binds a free port of its own (a picked port p
            // would also need p + 1 free for the second worker).
            "--media-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lodge");
    let c = reqwest::Client::new();
    for _ in 0..100 {
        if c.get(format!("http://127.0.0.1:{http}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("lodge did not become ready");
}

#[tokio::test]
async fn acknowledged_message_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::free_port();
    let db = lodge_chat::store::testing::database_url_from_env().await;
    let mut child = spawn(dir.path(), http, &db).await;
    let base = format!("http://127.0.0.1:{http}/api/v10");
    let c = reqwest::Client::new();
    let v: Value = c
        .post(format!("{base}/auth/register"))
        .json(&json!({ "username": "alice", "password": "password-1" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let g: Value = c
        .post(format!("{base}/guilds"))
        .header("Authorization", &token)
        .json(&json!({ "name": "Den" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = g["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == 0)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = c
            .post(format!("{base}/channels/{text}/messages"))
            .header("Authorization", &token)
            .json(&json!({ "content": format!("durable {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let m: Value = r.json().await.unwrap();
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    // SIGKILL right after the last 200: no chance to flush anything.
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn(dir.path(), http, &db).await;
    for (i, id) in ids.iter().enumerate() {
        let r = c
            .get(format!("{base}/channels/{text}/messages/{id}"))
            .header("Authorization", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "message {i} lost");
        let m: Value = r.json().await.unwrap();
        assert_eq!(m["content"], format!("durable {i}"));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
