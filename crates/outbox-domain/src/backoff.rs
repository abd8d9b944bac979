//! Exponential backoff between delivery attempts.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why a [`BackoffPolicy`] could not be built. A caller bug: fix the configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBackoff {
    /// The first delay must be positive.
    #[error("backoff base delay must be greater than zero")]
    ZeroBase,
    /// The growth factor must be a finite number of at least 1.
    #[error("backoff factor must be a finite number >= 1, got {0}")]
    Factor(f64),
    /// The cap must not be below the base.
    #[error("backoff cap ({cap:?}) must not be below the base delay ({base:?})")]
    CapBelowBase {
        /// The configured base delay.
        base: Duration,
        /// The configured cap.
        cap: Duration,
    },
    /// At least one attempt must be allowed.
    #[error("backoff must allow at least one attempt")]
    ZeroAttempts,
    /// Jitter is a fraction of the delay.
    #[error("backoff jitter must be between 0 and 1, got {0}")]
    Jitter(f64),
}

/// How much randomness to take off each delay, so that relays retrying the same outage
/// do not stampede the broker in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Exact delays.
    #[default]
    None,
    /// Each delay is scaled by a random factor in `(1 - fraction, 1]`.
    Proportional(f64),
}

/// Exponential backoff with a cap and an attempt limit.
///
/// The delay after the `n`th failed attempt is `base * factor^(n-1)`, capped at `cap`,
/// then reduced by the jitter. After `max_attempts` attempts a message is dead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackoffPolicy {
    base: Duration,
    factor: f64,
    cap: Duration,
    max_attempts: u32,
    jitter: Jitter,
}

impl BackoffPolicy {
    /// A validated policy without jitter.
    pub fn new(
        base: Duration,
        factor: f64,
        cap: Duration,
        max_attempts: u32,
    ) -> Result<Self, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff::ZeroBase);
        }
        if !factor.is_finite() || factor < 1.0 {
            return Err(InvalidBackoff::Factor(factor));
        }
        if cap < base {
            return Err(InvalidBackoff::CapBelowBase { base, cap });
        }
        if max_attempts == 0 {
            return Err(InvalidBackoff::ZeroAttempts);
        }
        Ok(Self {
            base,
            factor,
            cap,
            max_attempts,
            jitter: Jitter::None,
        })
    }

    /// The same policy with jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Result<Self, InvalidBackoff> {
        if let Jitter::Proportional(f) = jitter
            && !(0.0..=1.0).contains(&f)
        {
            return Err(InvalidBackoff::Jitter(f));
        }
        self.jitter = jitter;
        Ok(self)
    }

    /// The smartflow preset: 1 s doubling, capped at 32 s, 20 attempts.
    pub fn seconds() -> Self {
        Self {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(32),
            max_attempts: 20,
            jitter: Jitter::None,
        }
    }

    /// The go-trustlog preset: 1 m → 2 m → 4 m → 8 m → 16 m, 5 attempts.
    pub fn minutes() -> Self {
        Self {
            base: Duration::from_secs(60),
            factor: 2.0,
            cap: Duration::from_secs(16 * 60),
            max_attempts: 5,
            jitter: Jitter::None,
        }
    }

    /// How many attempts a message gets before it is dead.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The configured jitter.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The delay after `failed_attempts` failures, before jitter. Zero failures means
    /// no delay. Monotone in `failed_attempts` and never above the cap.
    pub fn nominal_delay(&self, failed_attempts: u32) -> Duration {
        if failed_attempts == 0 {
            return Duration::ZERO;
        }
        let exp = i32::try_from(failed_attempts - 1).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs).min(self.cap)
        }
    }

    /// The delay after `failed_attempts` failures with jitter drawn from `rng`.
    pub fn delay<R: Rng + ?Sized>(&self, failed_attempts: u32, rng: &mut R) -> Duration {
        let nominal = self.nominal_delay(failed_attempts);
        match self.jitter {
            Jitter::None => nominal,
            Jitter::Proportional(f) => {
                let u: f64 = rng.random_range(0.0..1.0);
                nominal.mul_f64(1.0 - f * u)
            }
        }
    }

    /// When to try again after `attempts` attempts have failed, or `None` when the
    /// attempts are used up and the message must become dead.
    pub fn retry_at<R: Rng + ?Sized>(
        &self,
        attempts: u32,
        now: DateTime<Utc>,
        rng: &mut R,
    ) -> Option<DateTime<Utc>> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay =
            chrono::Duration::from_std(self.delay(attempts, rng)).unwrap_or(chrono::Duration::MAX);
        Some(
            now.checked_add_signed(delay)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }
}

impl Default for BackoffPolicy {
    /// The [`seconds`](Self::seconds) preset.
    fn default() -> Self {
        Self::seconds()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn seconds_preset_matches_smartflow() {
        let p = BackoffPolicy::seconds();
        let got: Vec<u64> = (1..=8).map(|n| p.nominal_delay(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(p.max_attempts(), 20);
    }

    #[test]
    fn minutes_preset_matches_trustlog() {
        let p = BackoffPolicy::minutes();
        let got: Vec<u64> = (1..=5).map(|n| p.nominal_delay(n).as_secs() / 60).collect();
        assert_eq!(got, [1, 2, 4, 8, 16]);
        assert_eq!(p.max_attempts(), 5);
    }

    #[test]
    fn constructor_rejects_bad_input() {
        let s = Duration::from_secs;
        assert_eq!(
            BackoffPolicy::new(Duration::ZERO, 2.0, s(1), 3),
            Err(InvalidBackoff::ZeroBase)
        );
        assert!(matches!(
            BackoffPolicy::new(s(1), 0.5, s(2), 3),
            Err(InvalidBackoff::Factor(_))
        ));
        assert!(matches!(
            BackoffPolicy::new(s(1), f64::NAN, s(2), 3),
            Err(InvalidBackoff::Factor(_))
        ));
        assert!(matches!(
            BackoffPolicy::new(s(2), 2.0, s(1), 3),
            Err(InvalidBackoff::CapBelowBase { .. })
        ));
        assert_eq!(
            BackoffPolicy::new(s(1), 2.0, s(2), 0),
            Err(InvalidBackoff::ZeroAttempts)
        );
        assert_eq!(
            BackoffPolicy::seconds().with_jitter(Jitter::Proportional(1.5)),
            Err(InvalidBackoff::Jitter(1.5))
        );
    }

    #[test]
    fn retry_at_gives_up_after_max_attempts() {
        let p = BackoffPolicy::minutes();
        let now = Utc::now();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            p.retry_at(1, now, &mut rng),
            Some(now + chrono::Duration::minutes(1))
        );
        assert_eq!(
            p.retry_at(4, now, &mut rng),
            Some(now + chrono::Duration::minutes(8))
        );
        assert_eq!(p.retry_at(5, now, &mut rng), None);
    }

    proptest! {
        #[test]
        fn nominal_delay_is_monotone_and_capped(
            base_ms in 1u64..10_000,
            factor in 1.0f64..10.0,
            cap_extra_ms in 0u64..1_000_000,
            n in 0u32..200,
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = base + Duration::from_millis(cap_extra_ms);
            let p = BackoffPolicy::new(base, factor, cap, 10).unwrap();
            prop_assert!(p.nominal_delay(n) <= p.nominal_delay(n + 1));
            prop_assert!(p.nominal_delay(n) <= cap);
        }

        #[test]
        fn jitter_stays_within_its_fraction(frac in 0.0f64..=1.0, n in 1u32..40, seed: u64) {
            let p = BackoffPolicy::seconds().with_jitter(Jitter::Proportional(frac)).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let d = p.delay(n, &mut rng);
            let nominal = p.nominal_delay(n);
            prop_assert!(d <= nominal);
            prop_assert!(d.as_secs_f64() >= nominal.as_secs_f64() * (1.0 - frac) - 1e-9);
        }
    }
}
