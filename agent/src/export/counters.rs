//! The exporter's health counters, shared with the agent, which reports
//! them in its own telemetry (DESIGN.md: export failures, spool size, last
//! successful export).
//!
//! Atomics, because the exporter task writes them while the agent's health
//! reporting reads them from elsewhere; relaxed ordering, because each
//! number stands alone and a reader only needs an eventually fresh value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Live counters of one exporter; read them with [`ExportHealth::snapshot`].
#[derive(Debug, Default)]
pub struct ExportHealth {
    pub(crate) batches_submitted: AtomicU64,
    pub(crate) batches_acked: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) retryable_failures: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) permanent_failures: AtomicU64,
    pub(crate) rejected_data_points: AtomicU64,
    pub(crate) rejected_log_records: AtomicU64,
    pub(crate) spooled_batches: AtomicU64,
    pub(crate) spooled_bytes: AtomicU64,
    pub(crate) spool_dropped_batches: AtomicU64,
    pub(crate) spool_dropped_bytes: AtomicU64,
    pub(crate) spool_corrupt_files: AtomicU64,
    pub(crate) spool_errors: AtomicU64,
    pub(crate) spool_files: AtomicU64,
    pub(crate) spool_bytes: AtomicU64,
    /// Unix milliseconds of the last accepted request; 0 = never.
    pub(crate) last_success_ms: AtomicU64,
}

/// A copy of [`ExportHealth`] at one moment: plain numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportCounters {
    /// Batches handed to the exporter.
    pub batches_submitted: u64,
    /// Batches the collector acknowledged in full (sent directly or drained
    /// from the spool).
    pub batches_acked: u64,
    /// OTLP requests made (a batch is up to two: metrics and logs).
    pub requests: u64,
    /// Attempts scheduled again after a retryable or throttled failure.
    pub retries: u64,
    /// Attempts that failed in a way that may succeed later (unreachable,
    /// timeout, UNAVAILABLE, HTTP 5xx …), whether retried or spooled.
    pub retryable_failures: u64,
    /// Failures where the collector asked us to slow down (RESOURCE_EXHAUSTED
    /// with RetryInfo, HTTP 429/503 with Retry-After).
    pub throttled: u64,
    /// Batches dropped because the collector refused them for good.
    pub permanent_failures: u64,
    /// `rejected_data_points` of partial-success responses.
    pub rejected_data_points: u64,
    /// `rejected_log_records` of partial-success responses.
    pub rejected_log_records: u64,
    /// Batches written to the spool, and their bytes on disk.
    pub spooled_batches: u64,
    pub spooled_bytes: u64,
    /// Spooled batches deleted unsent to keep the spool within its bound
    /// (oldest first), plus batches too large for the bound; and their bytes.
    pub spool_dropped_batches: u64,
    pub spool_dropped_bytes: u64,
    /// Spool files that could not be read back and were set aside.
    pub spool_corrupt_files: u64,
    /// Disk operations on the spool that failed.
    pub spool_errors: u64,
    /// The spool now: files and bytes.
    pub spool_files: u64,
    pub spool_bytes: u64,
    /// When the collector last accepted a request.
    pub last_success: Option<SystemTime>,
}

impl ExportHealth {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    pub(crate) fn success_now(&self) {
        let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_millis().max(1));
        self.last_success_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ExportCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let last = g(&self.last_success_ms);
        ExportCounters {
            batches_submitted: g(&self.batches_submitted),
            batches_acked: g(&self.batches_acked),
            requests: g(&self.requests),
            retries: g(&self.retries),
            retryable_failures: g(&self.retryable_failures),
            throttled: g(&self.throttled),
            permanent_failures: g(&self.permanent_failures),
            rejected_data_points: g(&self.rejected_data_points),
            rejected_log_records: g(&self.rejected_log_records),
            spooled_batches: g(&self.spooled_batches),
            spooled_bytes: g(&self.spooled_bytes),
            spool_dropped_batches: g(&self.spool_dropped_batches),
            spool_dropped_bytes: g(&self.spool_dropped_bytes),
            spool_corrupt_files: g(&self.spool_corrupt_files),
            spool_errors: g(&self.spool_errors),
            spool_files: g(&self.spool_files),
            spool_bytes: g(&self.spool_bytes),
            last_success: (last != 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(last)),
        }
    }
}
