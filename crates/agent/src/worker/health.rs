//! Health checks with Docker's semantics: a probe run in the container every interval; the task is
//! `running` from the first pass, and `retries` consecutive failures (not counting those inside the
//! start period before any pass) make it unhealthy.

use std::time::Duration;

use rswarm_api::types::v1::HealthCheck;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u64 = 3;

/// A task's health check, Docker's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// The argv run in the container.
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u64,
    pub start_period: Duration,
}

fn ms_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

impl HealthConfig {
    /// `None` when there is nothing to check: no test, `["NONE"]`, or an unknown test type.
    pub fn from_wire(hc: &HealthCheck) -> Option<HealthConfig> {
        let (kind, rest) = hc.test.split_first()?;
        let argv = match kind.as_str() {
            "CMD-SHELL" => {
                let cmd = rest.join(" ");
                if cmd.trim().is_empty() {
                    return None;
                }
                vec!["/bin/sh".to_string(), "-c".to_string(), cmd]
            }
            "CMD" => {
                if rest.is_empty() {
                    return None;
                }
                rest.to_vec()
            }
            "NONE" => return None,
            other => {
                tracing::warn!(test = %other, "unknown health check type; health checks disabled");
                return None;
            }
        };
        Some(HealthConfig {
            argv,
            interval: ms_or(hc.interval_ms, DEFAULT_INTERVAL),
            timeout: ms_or(hc.timeout_ms, DEFAULT_TIMEOUT),
            retries: if hc.retries == 0 {
                DEFAULT_RETRIES
            } else {
                hc.retries
            },
            start_period: Duration::from_millis(hc.start_period_ms),
        })
    }
}

/// What one probe result changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing to report.
    None,
    /// The first pass (or a pass after failures): the task is running.
    Healthy,
    /// `retries` consecutive counted failures.
    Unhealthy,
}

/// The counting part of health checks: pure, fed with probe results.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    retries: u64,
    start_period: Duration,
    failures: u64,
    passed_once: bool,
    healthy: bool,
}

impl HealthTracker {
    pub fn new(cfg: &HealthConfig) -> HealthTracker {
        HealthTracker {
            retries: cfg.retries.max(1),
            start_period: cfg.start_period,
            failures: 0,
            passed_once: false,
            healthy: false,
        }
    }

    /// A tracker for a container that was already healthy (re-adopted while running).
    pub fn already_healthy(cfg: &HealthConfig) -> HealthTracker {
        let mut t = HealthTracker::new(cfg);
        t.passed_once = true;
        t.healthy = true;
        t
    }

    /// Records one probe result; `since_start` is the time since the container started.
    pub fn record(&mut self, passed: bool, since_start: Duration) -> Transition {
        if passed {
            self.failures = 0;
            self.passed_once = true;
            if self.healthy {
                return Transition::None;
            }
            self.healthy = true;
            return Transition::Healthy;
        }
        if !self.passed_once && since_start < self.start_period {
            return Transition::None;
        }
        self.failures += 1;
        if self.failures >= self.retries {
            self.healthy = false;
            return Transition::Unhealthy;
        }
        Transition::None
    }

    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(test: &[&str]) -> HealthCheck {
        HealthCheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn config() {
        let c = HealthConfig::from_wire(&hc(&["CMD-SHELL", "curl -f localhost"])).unwrap();
        assert_eq!(c.argv, vec!["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.retries, 3);
        assert_eq!(c.start_period, Duration::ZERO);
        let c = HealthConfig::from_wire(&HealthCheck {
            test: vec!["CMD".into(), "true".into()],
            interval_ms: 100,
            timeout_ms: 50,
            retries: 2,
            start_period_ms: 1000,
        })
        .unwrap();
        assert_eq!(c.argv, vec!["true"]);
        assert_eq!(c.interval, Duration::from_millis(100));
        assert_eq!(c.timeout, Duration::from_millis(50));
        assert_eq!(c.retries, 2);
        assert_eq!(c.start_period, Duration::from_secs(1));
        assert!(HealthConfig::from_wire(&hc(&["NONE"])).is_none());
        assert!(HealthConfig::from_wire(&hc(&[])).is_none());
        assert!(HealthConfig::from_wire(&hc(&["CMD"])).is_none());
        assert!(HealthConfig::from_wire(&hc(&["WHAT", "x"])).is_none());
    }

    fn cfg(retries: u64, start_ms: u64) -> HealthConfig {
        HealthConfig {
            argv: vec!["true".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::from_millis(start_ms),
        }
    }

    #[test]
    fn counting() {
        let s = Duration::from_secs;
        let mut t = HealthTracker::new(&cfg(3, 0));
        assert_eq!(t.record(false, s(1)), Transition::None);
        assert_eq!(t.record(false, s(2)), Transition::None);
        assert_eq!(t.record(true, s(3)), Transition::Healthy);
        assert_eq!(t.record(true, s(4)), Transition::None);
        assert_eq!(t.record(false, s(5)), Transition::None);
        assert_eq!(t.record(false, s(6)), Transition::None);
        assert_eq!(t.failures(), 2);
        assert_eq!(t.record(false, s(7)), Transition::Unhealthy);
    }

    #[test]
    fn start_period() {
        let s = Duration::from_secs;
        let mut t = HealthTracker::new(&cfg(2, 10_000));
        // Failures inside the start period do not count…
        for i in 1..9 {
            assert_eq!(t.record(false, s(i)), Transition::None);
        }
        assert_eq!(t.failures(), 0);
        // …after it they do.
        assert_eq!(t.record(false, s(11)), Transition::None);
        assert_eq!(t.record(false, s(12)), Transition::Unhealthy);

        // A pass inside the start period ends it: later failures count at once.
        let mut t = HealthTracker::new(&cfg(2, 10_000));
        assert_eq!(t.record(true, s(1)), Transition::Healthy);
        assert_eq!(t.record(false, s(2)), Transition::None);
        assert_eq!(t.record(false, s(3)), Transition::Unhealthy);
    }

    #[test]
    fn never_passing_is_unhealthy_after_retries() {
        let mut t = HealthTracker::new(&cfg(1, 0));
        assert_eq!(t.record(false, Duration::ZERO), Transition::Unhealthy);
        let mut t = HealthTracker::already_healthy(&cfg(3, 0));
        assert_eq!(t.record(true, Duration::ZERO), Transition::None);
    }
}
