//! CPU use over an interval, from `/proc`: how busy the machine's cores were, and how
//! much of a core the broker's process used. On two shared cores the broker, PostgreSQL
//! and the relay compete; these figures show how close a cell ran to the machine's
//! limit.

use crate::stats::median;
use serde_json::{Value, json};

/// The broker's process, if known (`--broker-pid`), to measure alongside the machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMeter {
    broker: Option<u32>,
}

/// A reading taken at the start of an interval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuStart {
    meter: CpuMeter,
    machine: Option<Ticks>,
    broker: Option<u64>,
}

/// `/proc/stat`'s aggregate line: busy and total clock ticks over all cores.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    busy: u64,
    total: u64,
    cores: u64,
}

/// CPU use over an interval. `None` where `/proc` could not be read (not Linux, or the
/// broker's process is gone).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    /// Busy share of all the machine's cores, 0–1.
    pub(crate) machine: Option<f64>,
    /// The broker process's CPU time, in cores (1.0 = one core all the time).
    pub(crate) broker: Option<f64>,
}

impl CpuMeter {
    pub(crate) fn new(broker: Option<u32>) -> Self {
        Self { broker }
    }

    pub(crate) fn start(self) -> CpuStart {
        CpuStart {
            meter: self,
            machine: machine_ticks(),
            broker: self.broker.and_then(process_ticks),
        }
    }
}

impl CpuStart {
    /// CPU use since this reading.
    pub(crate) fn finish(self) -> CpuUse {
        let machine = machine_ticks();
        let elapsed = match (self.machine, machine) {
            (Some(a), Some(b)) if b.total > a.total => Some((a, b)),
            _ => None,
        };
        let broker = self.meter.broker.and_then(process_ticks);
        CpuUse {
            machine: elapsed.map(|(a, b)| (b.busy - a.busy) as f64 / (b.total - a.total) as f64),
            // Per-core ticks elapsed = all cores' ticks / cores; both in USER_HZ.
            broker: match (elapsed, self.broker, broker) {
                (Some((a, b)), Some(p0), Some(p1)) => {
                    let per_core = (b.total - a.total) as f64 / b.cores.max(1) as f64;
                    Some(p1.saturating_sub(p0) as f64 / per_core)
                }
                _ => None,
            },
        }
    }
}

impl CpuUse {
    /// The median over `uses` of each figure present in all of them.
    pub(crate) fn median(uses: &[CpuUse]) -> CpuUse {
        let of = |f: fn(&CpuUse) -> Option<f64>| {
            let values: Vec<f64> = uses.iter().map(f).collect::<Option<_>>()?;
            (!values.is_empty()).then(|| median(values))
        };
        CpuUse {
            machine: of(|u| u.machine),
            broker: of(|u| u.broker),
        }
    }

    /// The two table cells: the machine's busy share, the broker's cores.
    pub(crate) fn cells(&self) -> (String, String) {
        (
            self.machine
                .map_or("–".into(), |m| format!("{:.0}%", m * 100.0)),
            self.broker.map_or("–".into(), |b| format!("{b:.2}")),
        )
    }

    pub(crate) fn json(&self) -> Value {
        json!({ "machine_busy": self.machine, "broker_cores": self.broker })
    }
}

/// The `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal …;
/// idle and iowait are not busy.
fn machine_ticks() -> Option<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut lines = stat.lines();
    let fields: Vec<u64> = lines
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4)?;
    let cores = lines.filter(|l| l.starts_with("cpu")).count() as u64;
    Some(Ticks {
        busy: total - idle,
        total,
        cores,
    })
}

/// utime + stime of `pid` (fields 14 and 15 of `/proc/PID/stat`), in USER_HZ ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
