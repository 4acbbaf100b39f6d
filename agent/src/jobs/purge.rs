//! The purge phase ([`cassette_common::phases::BACKUP_PURGE`]): retention rules applied by one
//! agent of a cluster over the shared repository, for the whole cluster. Its parameters are a
//! [`PurgeRequest`] as JSON (the coordinator sends the rules, the cluster's ring from its
//! registry and the backups of running operations to protect); its result is the
//! [`PurgeReport`](crate::ops::purge::PurgeReport).
//!
//! Idempotent: the removal engine persists its plan, so a rerun after a restart finishes an
//! interrupted removal first and then finds nothing more to remove.

use cassette_common::phases::BACKUP_PURGE;

use super::JobContext;
use super::PhaseError;
use super::phases::{fail, params, to_json};
use crate::ops::OpContext;
use crate::ops::purge::{PurgeRequest, purge};

/// Runs the purge over `ctx`'s repository.
pub(super) async fn run(ctx: &OpContext, job: &JobContext) -> Result<serde_json::Value, PhaseError> {
    let req: PurgeRequest = params(job, BACKUP_PURGE)?;
    let report = purge(ctx, &req).await.map_err(|e| {
        let r = e.retry();
        fail("purge", &e, r)
    })?;
    to_json(&report)
}
