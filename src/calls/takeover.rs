//! Reattaching one call, inside its `call` span: a live call whose lease is free
//! ([`CallServices::reattach_one`], from the start-up and takeover scans of `crate::app`) and a
//! call left `accepting` by a decision task that died ([`CallServices::reconcile_one`], from the
//! scans and from the webhook handler on a redelivery).

use std::time::Duration;

use tracing::{info, warn};

use crate::calls::lease;
use crate::calls::monitor::{self, Attach};
use crate::calls::record::{Api, CallState};
use crate::calls::services::CallServices;
use crate::config::Config;
use crate::telemetry;

/// How long a record may stay `accepting` before it is taken for stuck: the accept budget
/// (`[openai] accept_retry_budget_ms`) plus one request timeout plus the lease TTL (so a
/// decision whose record writes lag is not mistaken for a dead one).
pub fn stuck_accept_after(config: &Config) -> Duration {
    Duration::from_millis(
        config.openai.accept_retry_budget_ms
            + config.openai.request_timeout_ms
            + config.cluster.lease_ttl_ms,
    )
}

impl CallServices {
    /// Leases `call_id`, re-reads it and, still `accepting`, spawns its monitor with
    /// [`Attach::Reconcile`] (also run by the webhook handler on a redelivery of a stuck call).
    /// Returns whether a monitor was started.
    pub async fn reconcile_one(&self, call_id: &str) -> bool {
        let leases = &self.monitors.leases;
        if !self.acquire(call_id, "not reconciling").await {
            return false;
        }
        let record = match self.store.get_call(call_id).await {
            Ok(Some(record)) if record.state == CallState::Accepting => record,
            _ => {
                leases.release(call_id).await;
                return false;
            }
        };
        warn!("call stuck in accepting past the accept budget; attaching to find out");
        let profile = self.profile_or_default(&record.profile);
        monitor::spawn(self.monitors.clone(), record, profile, Attach::Reconcile).is_some()
    }

    /// Takes the lease of `call_id` (a store failure is logged with `then` and counted).
    async fn acquire(&self, call_id: &str, then: &str) -> bool {
        match self.monitors.leases.acquire(call_id).await {
            Ok(taken) => taken,
            Err(e) => {
                warn!(error = %e, "cannot take a call lease; {then}");
                metrics::counter!(telemetry::names::STORE_ERRORS, "op" => "acquire_lease")
                    .increment(1);
                false
            }
        }
    }

    /// Takes the lease of `call_id` (previously held by `previous_owner`, if any; `at_start`: by
    /// the start-up scan) and spawns its monitor with [`Attach::Resume`], after
    /// re-reading the record (strongly consistent) to make sure it is still live. A Twilio media
    /// call cannot be reattached (its stream socket died with the process that bridged it): it
    /// is closed out as `ended` / `bridge_lost_on_restart`. Returns whether a monitor was
    /// started.
    pub async fn reattach_one(
        &self,
        call_id: &str,
        previous_owner: Option<&str>,
        at_start: bool,
    ) -> bool {
        let leases = &self.monitors.leases;
        if !self.acquire(call_id, "not reattaching").await {
            return false;
        }
        let mut record = match self.store.get_call(call_id).await {
            Ok(Some(record)) if record.state.is_live() => record,
            Ok(_) => {
                // Ended meanwhile (the live list is eventually consistent).
                leases.release(call_id).await;
                return false;
            }
            Err(e) => {
                warn!(error = %e, "cannot read a call to reattach");
                leases.release(call_id).await;
                return false;
            }
        };
        let taken_over = previous_owner.is_some_and(|p| p != leases.owner()) || !at_start;
        lease::count(if taken_over {
            lease::events::TAKEN_OVER
        } else {
            lease::events::ACQUIRED
        });
        info!(previous_owner = ?previous_owner, "reattaching call");
        if record.api == Api::TwilioMedia {
            record.state = CallState::Ended;
            record.ended_at = Some(chrono::Utc::now());
            record.end_reason = Some("bridge_lost_on_restart".into());
            if let Err(e) = self.store.update_call(&record).await {
                warn!(error = %e, "cannot close out a media call");
            }
            leases.release(call_id).await;
            return false;
        }
        let profile = self.profile_or_default(&record.profile);
        monitor::spawn(self.monitors.clone(), record, profile, Attach::Resume).is_some()
    }
}
