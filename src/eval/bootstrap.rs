//! Is one system's WER really lower than another's on the same utterances? The paired
//! bootstrap (Bisani and Ney, "Bootstrap estimates for confidence intervals in ASR performance
//! evaluation", ICASSP 2004): draw the utterances with replacement many times, and each time
//! compute both systems' WER on the same draw (errors summed over summed reference words, as
//! the WER of the whole set is). The spread of the difference over the draws gives a confidence
//! interval, and the share of draws where A is better says how often A would win on another
//! set of utterances like these.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

crate::params! {
    /// How evaluate compares systems (the `bootstrap:` parameters).
    pub struct BootstrapConfig {
        /// Draws of the utterances (0: no comparisons).
        pub resamples: usize = 10_000,
        /// Coverage of the interval (percentile method).
        pub confidence: f64 = 0.95,
        pub seed: u64 = 0,
    }
}

/// One utterance as both systems decoded it: word errors of A and of B, reference words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub errors_a: u64,
    pub errors_b: u64,
    pub words: u64,
}

/// WER(A) - WER(B) on a set of utterances, with its bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub wer_a: f64,
    pub wer_b: f64,
    /// wer_a - wer_b on the utterances as they are.
    pub delta: f64,
    /// The interval of `delta` at `confidence`.
    pub low: f64,
    pub high: f64,
    /// Share of draws where A's WER is below B's (ties count half).
    pub a_better: f64,
    pub utterances: usize,
    pub resamples: usize,
    pub confidence: f64,
}

/// A difference between systems A and B on one evaluated set (or a group of its utterances).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub split: String,
    /// `column=value` for a group of the set's utterances (e.g. voice_group=new); None: all.
    pub group: Option<String>,
    #[serde(flatten)]
    pub difference: Difference,
}

impl Difference {
    /// The interval lies on one side of zero.
    pub fn significant(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

fn wer(errors: u64, words: u64) -> f64 {
    errors as f64 / words.max(1) as f64
}

/// Indices into `r` sorted draws of a central interval at `confidence` (percentile method): as
/// many draws cut below as above, `floor(r (1 - confidence) / 2)` each (at least the one draw
/// in the middle is kept).
pub fn interval_indices(r: usize, confidence: f64) -> (usize, usize) {
    let tail = (1.0 - confidence.clamp(0.0, 1.0)) / 2.0;
    // (1 - 0.9) / 2 is 0.04999... in binary: without the nudge it would cut one draw fewer below.
    let cut = ((tail * r as f64 + 1e-9).floor() as usize).min(r.saturating_sub(1) / 2);
    (cut, r - 1 - cut)
}

/// The paired bootstrap of WER(A) - WER(B) over `pairs` (None without utterances or draws).
pub fn paired(pairs: &[Pair], cfg: &BootstrapConfig) -> Option<Difference> {
    let n = pairs.len();
    if n == 0 || cfg.resamples == 0 {
        return None;
    }
    let sum = |f: fn(&Pair) -> u64| pairs.iter().map(f).sum::<u64>();
    let (ea, eb, w) = (sum(|p| p.errors_a), sum(|p| p.errors_b), sum(|p| p.words));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut deltas = Vec::with_capacity(cfg.resamples);
    let mut wins = 0.0;
    for _ in 0..cfg.resamples {
        let (mut a, mut b, mut words) = (0u64, 0u64, 0u64);
        for _ in 0..n {
            let p = &pairs[rng.random_range(0..n)];
            a += p.errors_a;
            b += p.errors_b;
            words += p.words;
        }
        let d = wer(a, words) - wer(b, words);
        wins += if d < 0.0 {
            1.0
        } else if d == 0.0 {
            0.5
        } else {
            0.0
        };
        deltas.push(d);
    }
    deltas.sort_by(f64::total_cmp);
    let r = cfg.resamples;
    let (lo, hi) = interval_indices(r, cfg.confidence);
    Some(Difference {
        wer_a: wer(ea, w),
        wer_b: wer(eb, w),
        delta: wer(ea, w) - wer(eb, w),
        low: deltas[lo],
        high: deltas[hi],
        a_better: wins / r as f64,
        utterances: n,
        resamples: r,
        confidence: cfg.confidence,
    })
}

/// Comparisons of A and B on one set: over all its utterances, then over each group (a pair
/// belongs to the groups it names, e.g. `voice_group=new`; groups in sorted order).
pub fn compare_set(
    a: &str,
    b: &str,
    split: &str,
    pairs: &[(Vec<String>, Pair)],
    cfg: &BootstrapConfig,
) -> Vec<Comparison> {
    let mut groups: Vec<&str> = pairs.iter().flat_map(|(g, _)| g.iter().map(String::as_str)).collect();
    groups.sort();
    groups.dedup();
    std::iter::once(None)
        .chain(groups.into_iter().map(Some))
        .filter_map(|g| {
            let mine: Vec<Pair> =
                pairs.iter().filter(|(gs, _)| g.is_none_or(|g| gs.iter().any(|x| x == g))).map(|(_, p)| *p).collect();
            Some(Comparison {
                a: a.into(),
                b: b.into(),
                split: split.into(),
                group: g.map(String::from),
                difference: paired(&mine, cfg)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(resamples: usize) -> BootstrapConfig {
        BootstrapConfig { resamples, confidence: 0.95, seed: 7 }
    }

    /// Two utterances, so every draw is one of three (by hand): both the first (A 2 errors, B 0,
    /// 20 words: +0.1, probability 1/4), one of each (A 1, B 2, 15 words: -1/15, 1/2), both the
    /// second (A 0, B 4, 10 words: -0.4, 1/4). The WER of a draw is a ratio of sums; the mean
    /// of per-utterance rates would give other values.
    #[test]
    fn two_utterances_by_hand() {
        let pairs = [Pair { errors_a: 1, errors_b: 0, words: 10 }, Pair { errors_a: 0, errors_b: 2, words: 5 }];
        let d = paired(&pairs, &cfg(20_000)).unwrap();
        assert!((d.wer_a - 1.0 / 15.0).abs() < 1e-12 && (d.wer_b - 2.0 / 15.0).abs() < 1e-12);
        assert!((d.delta + 1.0 / 15.0).abs() < 1e-12);
        assert!((d.low + 0.4).abs() < 1e-12, "{d:?}");
        assert!((d.high - 0.1).abs() < 1e-12, "{d:?}");
        // A wins the draws of -1/15 and -0.4: 3/4, within 4 standard errors of 20,000 draws.
        assert!((d.a_better - 0.75).abs() < 4.0 * (0.75f64 * 0.25 / 20_000.0).sqrt(), "{d:?}");
        assert!(!d.significant());
    }

    #[test]
    fn intervals_cut_as_many_draws_below_as_above() {
        assert_eq!(interval_indices(10_000, 0.95), (250, 9_749));
        assert_eq!(interval_indices(1_000, 0.9), (50, 949));
        assert_eq!(interval_indices(10_000, 0.9), (500, 9_499));
        assert_eq!(interval_indices(100, 0.8), (10, 89));
        assert_eq!(interval_indices(1_000, 0.68), (160, 839));
        assert_eq!(interval_indices(999, 0.95), (24, 974));
        assert_eq!(interval_indices(10, 0.0), (4, 5));
        assert_eq!(interval_indices(1, 0.95), (0, 0));
        assert_eq!(interval_indices(10, 1.0), (0, 9));
    }

    #[test]
    fn identical_systems_differ_by_nothing() {
        let pairs: Vec<Pair> = (0..30).map(|i| Pair { errors_a: i % 4, errors_b: i % 4, words: 5 + i % 7 }).collect();
        let d = paired(&pairs, &cfg(2_000)).unwrap();
        assert_eq!((d.delta, d.low, d.high, d.a_better), (0.0, 0.0, 0.0, 0.5));
    }

    #[test]
    fn a_consistent_gain_is_significant_and_a_noisy_one_is_not() {
        // A makes one error fewer on every one of 40 utterances of 10 words.
        let clear: Vec<Pair> = (0..40).map(|i| Pair { errors_a: 1 + i % 2, errors_b: 2 + i % 2, words: 10 }).collect();
        let d = paired(&clear, &cfg(2_000)).unwrap();
        assert!((d.delta + 0.1).abs() < 1e-12 && d.significant() && d.high < 0.0 && d.a_better == 1.0, "{d:?}");
        // The same total gain from two utterances, against errors that swing both ways.
        let noisy: Vec<Pair> = (0..40)
            .map(|i| match i % 4 {
                0 => Pair { errors_a: 0, errors_b: 3, words: 10 },
                2 => Pair { errors_a: 3, errors_b: 0, words: 10 },
                _ => Pair { errors_a: 1, errors_b: 1, words: 10 },
            })
            .chain([Pair { errors_a: 0, errors_b: 1, words: 10 }; 2])
            .collect();
        let d = paired(&noisy, &cfg(2_000)).unwrap();
        assert!(d.delta < 0.0 && !d.significant() && d.low < 0.0 && d.high > 0.0, "{d:?}");
        assert!(d.a_better > 0.5 && d.a_better < 0.9, "{d:?}");
    }

    #[test]
    fn the_same_seed_draws_the_same() {
        let pairs: Vec<Pair> = (0..25).map(|i| Pair { errors_a: i % 3, errors_b: (i + 1) % 4, words: 8 }).collect();
        assert_eq!(paired(&pairs, &cfg(500)), paired(&pairs, &cfg(500)));
        assert_eq!(paired(&[], &cfg(500)), None);
        assert_eq!(paired(&pairs, &cfg(0)), None);
    }
}
