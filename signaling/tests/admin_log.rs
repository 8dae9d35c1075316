//! The log filter changed through the admin API takes effect at once. A test binary of its
//! own: it installs the process's global subscriber (as `lodge serve` does: an `EnvFilter`
//! behind a reload layer) and reads what it writes.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use lodge_signaling::admin::LogFilter;
use serde_json::json;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, EnvFilter};

const OP: &str = "Operator 0123456789abcdef-admin";

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Lines containing every one of `words`.
    fn lines_with(&self, words: &[&str]) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).to_string();
        text.lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .map(String::from)
            .collect()
    }
}

#[tokio::test]
async fn a_log_filter_change_takes_effect_at_once() {
    let log = Captured::default();
    let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
    let writer = log.clone();
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        )
        .init();
    let n = node_with(|a| a.operator_token = Some("0123456789abcdef-admin".into())).await;
    let state = &n.run.as_ref().unwrap().state;
    assert!(state
        .admin
        .log_filter
        .set(LogFilter::new("info", handle))
        .is_ok());
    let (_, owner) = n.user("owner").await;
    let (g, _, _) = n.guild(&owner).await;
    let patch = |path: String, body: serde_json::Value| {
        let n = &n;
        async move {
            let (st, v) = n.req("PATCH", &path, Some(OP), Some(body)).await;
            assert_eq!(st, 200, "{v}");
            v
        }
    };

    let (_, v) = n.req("GET", "/admin/settings", Some(OP), None).await;
    assert_eq!(
        (
            v["log_filter"].as_str(),
            v["log_filter_reloadable"].as_bool()
        ),
        (Some("info"), Some(true))
    );
    let v = patch("/admin/settings".into(), json!({ "log_filter": "warn" })).await;
    assert_eq!(v["log_filter"], "warn");
    // The change itself is on record (logged under the filter it was asked under).
    let rec = log.lines_with(&["admin change", "log_filter", "info", "warn"]);
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert!(rec[0].contains("operator from 127.0.0.x"), "{rec:?}");

    // Under "warn", an info line is not written.
    patch(
        format!("/admin/guilds/{g}"),
        json!({ "messages_frozen": true }),
    )
    .await;
    assert_eq!(log.lines_with(&["admin change", &g]), Vec::<String>::new());

    patch("/admin/settings".into(), json!({ "log_filter": "info" })).await;
    patch(
        format!("/admin/guilds/{g}"),
        json!({ "messages_frozen": false }),
    )
    .await;
    let rec = log.lines_with(&["admin change", &g, "messages_frozen"]);
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert!(
        rec[0].contains("true") && rec[0].contains("false"),
        "old and new: {rec:?}"
    );

    // A filter that does not parse changes nothing and says why.
    let (st, v) = n
        .req(
            "PATCH",
            "/admin/settings",
            Some(OP),
            Some(json!({ "log_filter": "lodge_signaling=loud" })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["errors"]["log_filter"]["_errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not a valid filter"),
        "{v}"
    );
    let (_, v) = n.req("GET", "/admin/settings", Some(OP), None).await;
    assert_eq!(v["log_filter"], "info");
}
