//! openraft's storage conformance suite (`openraft::testing::log::Suite`) run against our
//! [`LogStore`] + [`GroupStateMachine`] of a partition group, on the std disk backend (a fresh
//! temp directory per test case) and on the simulated disk (a fresh `SimDisk` per test case).
//!
//! The suite builds a new store for every case through [`StoreBuilder::build`] and exercises
//! appends, reads, truncation, purge, vote, initial-state recovery, apply and snapshots.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use taskbroker_raft::apply::GroupStateMachine;
use taskbroker_raft::log_store::{LogHints, LogStore};
use taskbroker_raft::snapshot::SnapshotStore;
use taskbroker_raft::{GroupId, TypeConfig};
use taskbroker_storage::io::{open_disk, BackendChoice, Disk, SimDisk};
use taskbroker_storage::{Log, LogConfig};

/// The group the stores are built for: a partition group (retained log, queue state).
const GROUP: GroupId = GroupId(1 << 32);

fn storage_err(e: impl std::fmt::Display) -> StorageError<TypeConfig> {
    StorageError::from_io_error(
        ErrorSubject::Store,
        ErrorVerb::Write,
        io::Error::other(e.to_string()),
    )
}

/// Opens the log store and state machine of [`GROUP`] under `dir` on `disk`, the way
/// `RaftNode::open_group` does.
async fn open_store(
    disk: Arc<dyn Disk>,
    dir: &Path,
) -> Result<(LogStore, GroupStateMachine), StorageError<TypeConfig>> {
    disk.create_dir_all(&dir.join("snap"))
        .await
        .map_err(storage_err)?;
    let config = LogConfig {
        // Small segments so the suite's purges and truncations cross segment boundaries.
        segment_bytes_max: 4 << 10,
        ..LogConfig::default()
    };
    let log = Log::open(disk.clone(), dir.join("log"), config)
        .await
        .map_err(storage_err)?;
    let hints = Arc::new(LogHints::default());
    let store = LogStore::open(log, hints.clone())
        .await
        .map_err(storage_err)?;
    let sm = GroupStateMachine::open(GROUP, SnapshotStore::new(disk, dir.join("snap")), hints)
        .await
        .map_err(storage_err)?;
    Ok((store, sm))
}

/// Builds stores on the std backend, each in its own temp directory (the guard).
struct StdBuilder;

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, tempfile::TempDir> for StdBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, GroupStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(storage_err)?;
        let disk = open_disk(BackendChoice::Std).map_err(storage_err)?;
        let (store, sm) = open_store(disk, dir.path()).await?;
        Ok((dir, store, sm))
    }
}

/// Builds stores on fresh simulated disks seeded `base_seed`, `base_seed + 1`, ...; the guard
/// is the disk itself (kept alive for the case, inspectable in a debugger).
struct SimBuilder {
    next_seed: AtomicU64,
}

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, SimDisk> for SimBuilder {
    async fn build(
        &self,
    ) -> Result<(SimDisk, LogStore, GroupStateMachine), StorageError<TypeConfig>> {
        let seed = self.next_seed.fetch_add(1, Ordering::Relaxed);
        let disk = SimDisk::new(seed);
        let (store, sm) = open_store(Arc::new(disk.clone()), &PathBuf::from("/group")).await?;
        Ok((disk, store, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_std_disk() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(StdBuilder).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_sim_disk() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(SimBuilder {
        next_seed: AtomicU64::new(1),
    })
    .await
}

/// One `#[tokio::test]` per suite case and backend, so a failure names its case (`test_all`
/// above stops at the first failure and does not say which case it was).
macro_rules! cases {
    ($backend:ident, $builder:expr, $btype:ty, $guard:ty, [$($case:ident,)*]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> Result<(), io::Error> {
                    let (_guard, store, sm) = $builder.build().await?;
                    Suite::<TypeConfig, LogStore, GroupStateMachine, $btype, $guard>::$case(store, sm).await
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($backend:ident, $builder:expr, $btype:ty, $guard:ty) => {
        cases!(
            $backend,
            $builder,
            $btype,
            $guard,
            [
                last_membership_in_log_initial,
                last_membership_in_log,
                last_membership_in_log_multi_step,
                get_membership_initial,
                get_membership_from_log_and_empty_sm,
                get_membership_from_empty_log_and_sm,
                get_membership_from_log_le_sm_last_applied,
                get_membership_from_log_gt_sm_last_applied_1,
                get_membership_from_log_gt_sm_last_applied_2,
                get_initial_state_without_init,
                get_initial_state_membership_from_empty_log_and_sm,
                get_initial_state_membership_from_sm_inlog_is_smaller,
                get_initial_state_membership_from_log_insm_is_smaller,
                get_initial_state_with_state,
                get_initial_state_last_log_gt_sm,
                get_initial_state_last_log_lt_sm,
                get_initial_state_inverted_log_order,
                get_initial_state_conflict_at_same_index,
                get_initial_state_log_ids,
                get_initial_state_re_apply_committed,
                save_vote,
                get_log_entries,
                limited_get_log_entries,
                leader_bounded_stream,
                entries_stream,
                try_get_log_entry,
                log_reader_reads_new_entries,
                initial_logs,
                get_log_state,
                get_log_id,
                last_id_in_log,
                last_applied_state,
                purge_logs_upto_0,
                purge_logs_upto_5,
                purge_logs_upto_20,
                delete_logs_after_11,
                delete_logs_after_5,
                delete_logs_after_0,
                delete_logs_after_none,
                append_to_log,
                snapshot_meta,
                snapshot_meta_optional,
                apply_single,
                apply_multiple,
            ]
        );
    };
}

all_cases!(std_case, StdBuilder, StdBuilder, tempfile::TempDir);
all_cases!(
    sim_case,
    SimBuilder {
        next_seed: AtomicU64::new(1)
    },
    SimBuilder,
    SimDisk
);
