//! The REST client the generators share.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        loop {
            let mut r = self
                .http
                .request(method.clone(), format!("{}/api/v10{path}", self.base));
            if let Some(t) = token {
                r = r.header("Authorization", format!("Bot {t}"));
            }
            if let Some(b) = &body {
                r = r.json(b);
            }
            let res = r.send().await.with_context(|| {
                format!("{method} {path}: is the node running at {}?", self.base)
            })?;
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap_or(Value::Null);
            if status == 429 || status == 503 {
                // Setup traffic obeys the rate limit and waits out a busy password-hashing
                // pool; measured traffic counts either as an error.
                let wait = v["retry_after"].as_f64().unwrap_or(0.5);
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                continue;
            }
            return Ok((status, v));
        }
    }
}
