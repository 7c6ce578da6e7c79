//! Best-effort writes of call records and events from request handlers (the webhook handler,
//! the Twilio routes, the media bridge): a store failure is logged (without the record's
//! content) and counted in `voxmachina_store_errors_total{op}`, and the call goes on. The
//! monitor keeps its own copy of the record and saves it again at the end, so a failed write
//! here loses at most an intermediate state.

use tracing::warn;

use crate::calls::record::{CallEvent, CallRecord};
use crate::calls::services::HasStore;
use crate::telemetry::names;

/// `Store::update_call`, logged and counted on failure.
pub(crate) async fn save(app: &(impl HasStore + ?Sized), record: &CallRecord) {
    if let Err(e) = app.store().update_call(record).await {
        warn!(error = %e, "cannot store call record");
        metrics::counter!(names::STORE_ERRORS, "op" => "update_call").increment(1);
    }
}

/// Appends a [`CallEvent`] of `kind` with `detail` (see [`append`]).
pub(crate) async fn event(
    app: &(impl HasStore + ?Sized),
    call_id: &str,
    kind: &str,
    detail: serde_json::Value,
) {
    append(app, CallEvent::new(call_id, kind, detail)).await;
}

/// `Store::append_event`, logged and counted on failure.
pub(crate) async fn append(app: &(impl HasStore + ?Sized), event: CallEvent) {
    if let Err(e) = app.store().append_event(&event).await {
        warn!(error = %e, "cannot store call event");
        metrics::counter!(names::STORE_ERRORS, "op" => "append_event").increment(1);
    }
}
