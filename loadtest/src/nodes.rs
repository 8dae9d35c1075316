//! The nodes under load: one or more base URLs (`--url A --url B` or `--url A,B`), each with its
//! REST client. Sessions and callers are dealt to the nodes round robin: number `k` (counted
//! in the order a generator starts them) goes to node `k mod nodes`.

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::api::Api;

pub struct Nodes {
    /// One REST client per node, in the order the URLs were given.
    pub apis: Vec<Arc<Api>>,
}

impl Nodes {
    /// Clients for `urls` (trailing slashes dropped); refuses an empty list and duplicates.
    pub fn new(urls: &[String]) -> Result<Nodes> {
        let urls = normalize(urls)?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Nodes {
            apis: urls
                .into_iter()
                .map(|base| {
                    Arc::new(Api {
                        http: http.clone(),
                        base,
                    })
                })
                .collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.apis.len()
    }

    /// The node that session or caller number `k` uses.
    pub fn of(&self, k: usize) -> usize {
        k % self.apis.len()
    }

    pub fn api(&self, k: usize) -> &Arc<Api> {
        &self.apis[self.of(k)]
    }

    pub fn urls(&self) -> Vec<String> {
        self.apis.iter().map(|a| a.base.clone()).collect()
    }
}

/// Trimmed, de-slashed URLs; an error for none, an empty entry or the same node twice.
pub fn normalize(urls: &[String]) -> Result<Vec<String>> {
    let out: Vec<String> = urls
        .iter()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .collect();
    if out.is_empty() {
        bail!("--url: give at least one node URL");
    }
    if let Some(bad) = out
        .iter()
        .find(|u| !u.starts_with("http://") && !u.starts_with("https://"))
    {
        bail!("--url {bad:?} is not an http:// or https:// URL");
    }
    for (i, u) in out.iter().enumerate() {
        if out[..i].contains(u) {
            bail!("--url {u} is given twice: each node once");
        }
    }
    Ok(out)
}

/// `--server-pid` values checked against the nodes: none, or one per node in the same order.
pub fn check_pids(pids: &[u32], nodes: usize) -> Result<()> {
    if !pids.is_empty() && pids.len() != nodes {
        bail!(
            "--server-pid: {} PID(s) for {nodes} node URL(s); give one per --url, in the same order",
            pids.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_and_checked() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            normalize(&v(&["http://127.0.0.2:8080/", " http://127.0.0.3:8080"])).unwrap(),
            v(&["http://127.0.0.2:8080", "http://127.0.0.3:8080"])
        );
        let twice = normalize(&v(&["http://a:1", "http://a:1/"])).unwrap_err();
        assert!(twice.to_string().contains("given twice"), "{twice}");
        assert!(normalize(&v(&["127.0.0.1:8080"])).is_err());
        assert!(normalize(&[]).is_err());
        assert!(check_pids(&[], 3).is_ok());
        assert!(check_pids(&[1, 2, 3], 3).is_ok());
        assert!(check_pids(&[1], 3)
            .unwrap_err()
            .to_string()
            .contains("one per --url"));
    }

    #[test]
    fn sessions_go_round_robin() {
        let n = Nodes::new(&[
            "http://a:1".into(),
            "http://b:1".into(),
            "http://c:1".into(),
        ])
        .unwrap();
        let picks: Vec<usize> = (0..7).map(|k| n.of(k)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(n.api(4).base, "http://b:1");
    }
}
