//! Percentiles and summaries of latency samples, and the unit formatting the table uses.

use std::time::Duration;

/// The nearest-rank percentile `p` (0–100) of `sorted`, which must be sorted ascending: the
/// smallest sample such that at least `p` % of the samples are less than or equal to it.
/// `None` for no samples. `p` is clamped to 0–100; p0 is the minimum, p100 the maximum.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

/// The usual statistics of a set of latency samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Summary {
            n: sorted.len(),
            min: *sorted.first()?,
            p50: percentile(&sorted, 50.0)?,
            p99: percentile(&sorted, 99.0)?,
            max: *sorted.last()?,
        })
    }
}

/// A latency for humans: µs below 1 ms, ms with two decimals below 10 ms, one decimal below 1 s,
/// seconds above.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 0.001 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 0.01 {
        format!("{:.2} ms", secs * 1e3)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

/// A configured period: whole milliseconds as "500 ms", whole seconds as "5 s", else like
/// [`fmt_duration`].
pub fn fmt_period(d: Duration) -> String {
    if d.subsec_nanos() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else if d < Duration::from_secs(1) && Duration::from_millis(d.subsec_millis().into()) == d {
        format!("{} ms", d.as_millis())
    } else {
        fmt_duration(d)
    }
}

/// A rate with no more precision than it deserves: whole numbers from 100 up, one decimal below.
pub fn fmt_rate(per_sec: f64, unit: &str) -> String {
    if per_sec >= 100.0 {
        format!("{per_sec:.0} {unit}/s")
    } else {
        format!("{per_sec:.1} {unit}/s")
    }
}

/// A size given in KiB (as /proc reports it), shown in MiB with one decimal.
pub fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.5), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 0.1), Some(1));
    }

    #[test]
    fn percentile_of_small_sets() {
        assert_eq!(percentile::<u32>(&[], 50.0), None);
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        // Ten samples: p50 is the 5th, p99 the 10th (the maximum).
        let ten: Vec<u32> = (10..20).collect();
        assert_eq!(percentile(&ten, 50.0), Some(14));
        assert_eq!(percentile(&ten, 99.0), Some(19));
        // Two samples: the median is the lower one.
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
    }

    #[test]
    fn percentile_clamps_out_of_range_p() {
        let v = [1, 2, 3];
        assert_eq!(percentile(&v, -5.0), Some(1));
        assert_eq!(percentile(&v, 250.0), Some(3));
        assert_eq!(percentile(&v, f64::NAN), Some(1));
    }

    #[test]
    fn summary_sorts_its_input() {
        let s = Summary::of(&[ms(30), ms(10), ms(20)]).unwrap();
        assert_eq!(s.n, 3);
        assert_eq!(s.min, ms(10));
        assert_eq!(s.p50, ms(20));
        assert_eq!(s.p99, ms(30));
        assert_eq!(s.max, ms(30));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn durations_are_formatted_by_magnitude() {
        assert_eq!(fmt_duration(Duration::from_micros(420)), "420 µs");
        assert_eq!(fmt_duration(Duration::from_micros(4_250)), "4.25 ms");
        assert_eq!(fmt_duration(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(fmt_duration(ms(999)), "999.0 ms");
        assert_eq!(fmt_duration(ms(1_540)), "1.54 s");
        assert_eq!(fmt_duration(Duration::from_secs(15)), "15.00 s");
    }

    #[test]
    fn periods_are_formatted_without_spurious_decimals() {
        assert_eq!(fmt_period(ms(2)), "2 ms");
        assert_eq!(fmt_period(ms(500)), "500 ms");
        assert_eq!(fmt_period(Duration::from_secs(5)), "5 s");
        assert_eq!(fmt_period(ms(1_500)), "1.50 s");
        assert_eq!(fmt_period(Duration::from_micros(2_500)), "2.50 ms");
        assert_eq!(fmt_period(Duration::ZERO), "0 ms");
    }

    #[test]
    fn rates_and_sizes() {
        assert_eq!(fmt_rate(1234.56, "writes"), "1235 writes/s");
        assert_eq!(fmt_rate(42.26, "writes"), "42.3 writes/s");
        assert_eq!(fmt_kib(95_232), "93.0 MiB");
        assert_eq!(fmt_kib(0), "0.0 MiB");
    }
}
