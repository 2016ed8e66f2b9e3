//! Deterministic splits, stratified by cluster.
//!
//! For each cluster in id order: its row ids sorted (so the result does not depend on the row
//! order of the embeddings), shuffled by a ChaCha8 generator seeded with `seed` on the stream
//! numbered by the cluster id (so one cluster's split does not depend on the others' sizes),
//! then the first round(n * test_fraction) go to `test`, the next round(n * val_fraction) to
//! `val`, round(rest * expert_pretrain_fraction) of the rest to `expert_pretrain` and the
//! remainder to `joint_train`. Rows with cluster -1 (dropped noise) are in no split.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::artifacts::Splits;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFractions {
    pub test: f64,
    pub val: f64,
    pub expert_pretrain: f64,
}

impl SplitFractions {
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("test_fraction", self.test),
            ("val_fraction", self.val),
            ("expert_pretrain_fraction", self.expert_pretrain),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} = {v} must be within [0, 1]");
            }
        }
        if self.test + self.val > 1.0 {
            bail!("test_fraction + val_fraction = {} exceeds 1", self.test + self.val);
        }
        Ok(())
    }
}

/// How many rows of a cluster of `n` go to (test, val, expert_pretrain, joint_train).
pub fn counts(n: usize, f: &SplitFractions) -> [usize; 4] {
    let test = ((n as f64 * f.test).round() as usize).min(n);
    let val = ((n as f64 * f.val).round() as usize).min(n - test);
    let rest = n - test - val;
    let pre = ((rest as f64 * f.expert_pretrain).round() as usize).min(rest);
    [test, val, pre, rest - pre]
}

/// The split of every row whose cluster is >= 0, in row order.
pub fn make_splits(ids: &[String], cluster: &[i32], k: usize, f: &SplitFractions, seed: u64) -> Result<Splits> {
    f.check()?;
    assert_eq!(ids.len(), cluster.len());
    let mut by_cluster: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &c) in cluster.iter().enumerate() {
        if c >= 0 {
            by_cluster[c as usize].push(i);
        }
    }
    let mut split_of: BTreeMap<usize, &'static str> = BTreeMap::new();
    for (c, rows) in by_cluster.iter_mut().enumerate() {
        rows.sort_by(|&a, &b| ids[a].cmp(&ids[b]));
        if let Some(w) = rows.windows(2).find(|w| ids[w[0]] == ids[w[1]]) {
            bail!("id `{}` appears more than once in the embeddings", ids[w[0]]);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(c as u64);
        rows.shuffle(&mut rng);
        let [test, val, pre, _] = counts(rows.len(), f);
        for (pos, &i) in rows.iter().enumerate() {
            let s = if pos < test {
                "test"
            } else if pos < test + val {
                "val"
            } else if pos < test + val + pre {
                "expert_pretrain"
            } else {
                "joint_train"
            };
            split_of.insert(i, s);
        }
    }
    let (ids, split) = split_of.into_iter().map(|(i, s)| (ids[i].clone(), s.to_string())).unzip();
    Ok(Splits { ids, split })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::write_dataset;
    use std::collections::HashMap;

    const F: SplitFractions = SplitFractions { test: 0.1, val: 0.1, expert_pretrain: 0.3 };

    fn data() -> (Vec<String>, Vec<i32>) {
        // Three clusters of 57, 23 and 40 rows interleaved, and 5 dropped rows.
        let mut ids = Vec::new();
        let mut cl = Vec::new();
        for i in 0..125 {
            ids.push(format!("utt{i:04}"));
            cl.push(if i % 25 == 0 {
                -1
            } else if i < 60 {
                0
            } else if i < 85 {
                1
            } else {
                2
            });
        }
        (ids, cl)
    }

    #[test]
    fn counts_by_hand() {
        // 57: test round(5.7)=6, val 6, rest 45 -> pretrain round(13.5)=14, joint 31.
        assert_eq!(counts(57, &F), [6, 6, 14, 31]);
        assert_eq!(counts(1, &F), [0, 0, 0, 1]);
        assert_eq!(counts(0, &F), [0, 0, 0, 0]);
        assert_eq!(counts(10, &SplitFractions { test: 0.5, val: 0.6, expert_pretrain: 1.0 }), [5, 5, 0, 0]);
    }

    #[test]
    fn splits_are_disjoint_complete_and_stratified() {
        let (ids, cl) = data();
        let s = make_splits(&ids, &cl, 3, &F, 42).unwrap();
        // Every non-dropped row exactly once, in row order; dropped rows nowhere.
        let kept: Vec<String> = ids.iter().zip(&cl).filter(|(_, c)| **c >= 0).map(|(i, _)| i.clone()).collect();
        assert_eq!(s.ids, kept);
        let cluster_of: HashMap<&String, i32> = ids.iter().zip(cl.iter().copied()).collect();
        for c in 0..3 {
            let n = cl.iter().filter(|&&x| x == c).count() as f64;
            let got = |name: &str| {
                s.ids.iter().zip(&s.split).filter(|(i, sp)| cluster_of[i] == c && sp.as_str() == name).count() as f64
            };
            // Within one utterance of the ideal share, per cluster and split.
            assert!((got("test") - n * 0.1).abs() <= 1.0);
            assert!((got("val") - n * 0.1).abs() <= 1.0);
            let rest = n - got("test") - got("val");
            assert!((got("expert_pretrain") - rest * 0.3).abs() <= 1.0);
            assert_eq!(got("test") + got("val") + got("expert_pretrain") + got("joint_train"), n);
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_differs() {
        let (ids, cl) = data();
        let dir = std::env::temp_dir().join(format!("wm-splits-{}", std::process::id()));
        let bytes = |seed: u64, name: &str| {
            let s = make_splits(&ids, &cl, 3, &F, seed).unwrap();
            let d = dir.join(name);
            write_dataset(&d, &[s.to_batch().unwrap()], &BTreeMap::new()).unwrap();
            std::fs::read(d.join("part-00000.parquet")).unwrap()
        };
        assert_eq!(bytes(42, "a"), bytes(42, "b"));
        assert_ne!(bytes(42, "a"), bytes(43, "c"));
        // The split does not depend on the row order of the input.
        let a = make_splits(&ids, &cl, 3, &F, 42).unwrap();
        let (mut rids, mut rcl) = (ids.clone(), cl.clone());
        rids.reverse();
        rcl.reverse();
        let b = make_splits(&rids, &rcl, 3, &F, 42).unwrap();
        let map: HashMap<_, _> = b.ids.iter().zip(&b.split).collect();
        assert!(a.ids.iter().zip(&a.split).all(|(i, s)| map[i] == s));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
