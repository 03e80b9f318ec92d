//! The leader tells the manager where it is (SPEC §5): after winning an election it POSTs
//! `{"name","term","http"}` to `<manager-url>/leader`, retrying with backoff until the manager
//! answers 2xx or the node is no longer leader of that term. Off unless a manager URL is set.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::status::NodeStatus;
use crate::proto::auth::{self, Key};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Announces every leadership of this node until `status` closes. An https manager is
/// verified with `tls`.
///
/// With the cluster `key` (secure mode) each announcement is signed
/// ([`crate::proto::auth::SIGNATURE_HEADER`]): the manager takes only signed ones.
pub async fn run(
    manager_url: String,
    tls: crate::tls::ClientTls,
    mut status: watch::Receiver<Arc<NodeStatus>>,
    key: Option<Key>,
) {
    let url = format!("{}/leader", manager_url.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .tls_config(tls.config())
        .build()
        .new_agent();
    let mut announced: Option<u64> = None;
    loop {
        // Wait until this node leads a term it has not announced.
        let lead = loop {
            let s = status.borrow_and_update().clone();
            if s.role == "LEADER" && announced != Some(s.term) {
                break s;
            }
            if status.changed().await.is_err() {
                return;
            }
        };
        let body = json!({ "name": lead.name, "term": lead.term, "http": lead.leader_http });
        let mut wait = FIRST_RETRY;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (client, target, payload) = (agent.clone(), url.clone(), body.to_string());
            let signature =
                key.as_ref().map(|k| auth::sign_request(k, "POST /leader", auth::clock_micros(), payload.as_bytes()));
            let answer = tokio::task::spawn_blocking(move || {
                let mut request = client.post(&target).header("Content-Type", "application/json");
                if let Some(signature) = signature {
                    request = request.header(auth::SIGNATURE_HEADER, signature);
                }
                request.send(payload.as_bytes())
            })
            .await;
            match answer {
                Ok(Ok(response)) if response.status().is_success() => {
                    log::info!("{}: told the manager at {url} it leads term {}", lead.name, lead.term);
                    announced = Some(lead.term);
                    break;
                }
                Ok(Ok(response)) => {
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        log::warn!(
                            "{}: manager at {url} answered {} (attempt {attempt})",
                            lead.name,
                            response.status()
                        );
                    }
                }
                Ok(Err(e)) if crate::tls::is_tls_error(&e) => {
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        log::warn!(
                            "{}: refused the manager at {url}: {e} (attempt {attempt}; its certificate must chain \
                             to the CA given with --tls-ca and name its host)",
                            lead.name
                        );
                    }
                }
                Ok(Err(e)) => {
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        log::warn!("{}: cannot reach the manager at {url}: {e} (attempt {attempt})", lead.name);
                    }
                }
                Err(e) => log::warn!("{}: announcement task failed: {e}", lead.name),
            }
            // The backoff, cut short only when this node stops leading the term: its status
            // changes with every write, which is no reason to ask again sooner.
            let superseded = async {
                loop {
                    if status.changed().await.is_err() {
                        return false;
                    }
                    let now = status.borrow();
                    if now.role != "LEADER" || now.term != lead.term {
                        return true;
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                open = superseded => if !open { return },
            }
            let now = status.borrow().clone();
            if now.role != "LEADER" || now.term != lead.term {
                // Superseded: the next leader announces itself.
                log::info!(
                    "{}: no longer leads term {}; stops announcing it after {attempt} attempt(s)",
                    lead.name,
                    lead.term
                );
                break;
            }
            wait = (wait * 2).min(MAX_RETRY);
        }
    }
}
